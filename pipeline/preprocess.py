"""Stage `preprocess`: decode and validate the raw IDX files, scale, flatten and split.

Reads params `seed`, `dataset` and data/raw/; writes data/processed/{train,validation,test}.npz
(float32 inputs in [0, 1], flattened; integer labels), reports/class_counts.json
(images per class in each split) and reports/sample_images.png (a 5x5 grid of
random training images with their labels).

The validation set is a stratified, seeded share of the training images; the
test images are only ever used by the evaluate stage.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: the pipeline runs headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from pipeline.config import load_params  # noqa: E402
from pipeline.datasets import PROCESSED_DIRECTORY, RAW_DIRECTORY, read_idx_images_and_labels, save_split  # noqa: E402
from pipeline.errors import run_stage  # noqa: E402

logger = logging.getLogger(__name__)

CLASS_COUNTS_FILE = Path("reports/class_counts.json")
SAMPLE_IMAGES_FILE = Path("reports/sample_images.png")
GRID_SIZE = 5


def preprocess(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    validation_fraction: float,
    seed: int,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Split, subsample, scale to [0, 1] and flatten; return {split: (inputs, labels)}."""
    if max_train_samples is not None and max_train_samples < len(train_labels):
        train_images, train_labels = _stratified_subset(train_images, train_labels, max_train_samples, seed)
    if max_test_samples is not None and max_test_samples < len(test_labels):
        test_images, test_labels = _stratified_subset(test_images, test_labels, max_test_samples, seed)
    if validation_fraction > 0:
        train_images, validation_images, train_labels, validation_labels = train_test_split(
            train_images, train_labels, test_size=validation_fraction, stratify=train_labels, random_state=seed
        )
    else:
        validation_images = train_images[:0]
        validation_labels = train_labels[:0]
    splits = {
        "train": (train_images, train_labels),
        "validation": (validation_images, validation_labels),
        "test": (test_images, test_labels),
    }
    return {name: (_scale_and_flatten(images), labels.astype(np.int64)) for name, (images, labels) in splits.items()}


def class_counts(splits: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int) -> dict[str, dict[str, int]]:
    return {
        name: {str(label): int(count) for label, count in enumerate(np.bincount(labels, minlength=num_classes))}
        for name, (_, labels) in splits.items()
    }


def save_sample_grid(images: np.ndarray, labels: np.ndarray, path: Path, seed: int) -> None:
    """A GRID_SIZE x GRID_SIZE grid of random images, each titled with its label."""
    chosen = np.random.default_rng(seed).choice(len(images), size=min(GRID_SIZE**2, len(images)), replace=False)
    figure, axes = plt.subplots(GRID_SIZE, GRID_SIZE, figsize=(6, 6.6))
    for axis in axes.flat:
        axis.axis("off")
    for axis, index in zip(axes.flat, chosen, strict=False):
        axis.imshow(images[index], cmap="gray_r")
        axis.set_title(f"label {labels[index]}", fontsize=9)
    figure.suptitle("Random training images")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _stratified_subset(images: np.ndarray, labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    subset_images, _, subset_labels, _ = train_test_split(
        images, labels, train_size=size, stratify=labels, random_state=seed
    )
    return subset_images, subset_labels


def _scale_and_flatten(images: np.ndarray) -> np.ndarray:
    # uint8 pixels 0-255 -> float32 in [0, 1]; 28x28 -> 784 features for the Dense input layer.
    features = int(np.prod(images.shape[1:]))  # explicit: -1 cannot be inferred for an empty split
    return images.reshape(len(images), features).astype(np.float32) / np.float32(255.0)


def main() -> None:
    params = load_params()
    dataset = params.dataset
    files = dataset.files
    train_images, train_labels = read_idx_images_and_labels(
        RAW_DIRECTORY / files.train_images.name,
        RAW_DIRECTORY / files.train_labels.name,
        tuple(dataset.image_shape),
        dataset.num_classes,
    )
    test_images, test_labels = read_idx_images_and_labels(
        RAW_DIRECTORY / files.test_images.name,
        RAW_DIRECTORY / files.test_labels.name,
        tuple(dataset.image_shape),
        dataset.num_classes,
    )
    save_sample_grid(train_images, train_labels, SAMPLE_IMAGES_FILE, params.seed)
    splits = preprocess(
        train_images,
        train_labels,
        test_images,
        test_labels,
        dataset.validation_fraction,
        params.seed,
        dataset.max_train_samples,
        dataset.max_test_samples,
    )
    for name, (inputs, labels) in splits.items():
        save_split(PROCESSED_DIRECTORY / f"{name}.npz", inputs, labels)
        logger.info("%s: %d examples of %d features", name, *inputs.shape)
    counts = class_counts(splits, dataset.num_classes)
    CLASS_COUNTS_FILE.write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    run_stage(main)
