"""Stage `preprocess`: decode and validate the raw files, split and flatten.

Reads params `seed`, `dataset` and data/raw/; writes data/processed/{train,validation,test}.npz
(raw inputs, flattened: uint8 pixels or float32 table values; integer labels),
reports/class_counts.json (examples per class in each split) and
reports/samples.png (a 5x5 grid of random training images with their class, or
for tables each feature's histogram per class).

Nothing is scaled here: the model scales its raw inputs in its first layer
(pipeline.model.input_scaling), so the served model takes what the files hold.

The validation set is a stratified, seeded share of the training examples;
where the format has no test split (csv), a stratified, seeded share of all
rows is held out first (scikit-learn's train_test_split). The test examples are
only ever used by the evaluate stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from sklearn.model_selection import train_test_split

from pipeline.config import DatasetConfig, load_params
from pipeline.decoders import RawData, read_dataset
from pipeline.errors import DataError
from pipeline.files import atomic_path, write_json
from pipeline.paths import CLASS_COUNTS_FILE, PROCESSED_DIRECTORY, RAW_DIRECTORY, SAMPLES_FILE
from pipeline.splits import Split, save_split
from pipeline.stage import run_stage

logger = logging.getLogger(__name__)

GRID_SIZE = 5


def preprocess(raw: RawData, *, dataset: DatasetConfig, seed: int) -> dict[str, Split]:
    """Split, subsample and flatten; return {split name: Split} with the raw values."""
    train_inputs, train_labels, test_inputs, test_labels = raw
    if test_inputs is None:
        train_inputs, train_labels, test_inputs, test_labels = _held_out(
            train_inputs, train_labels, dataset.test_fraction, seed
        )
    if dataset.max_train_samples is not None and dataset.max_train_samples < len(train_labels):
        train_inputs, train_labels = _stratified_subset(train_inputs, train_labels, dataset.max_train_samples, seed)
    if dataset.max_test_samples is not None and dataset.max_test_samples < len(test_labels):
        test_inputs, test_labels = _stratified_subset(test_inputs, test_labels, dataset.max_test_samples, seed)
    if dataset.validation_fraction > 0:
        train_inputs, train_labels, validation_inputs, validation_labels = _held_out(
            train_inputs, train_labels, dataset.validation_fraction, seed
        )
    else:
        validation_inputs, validation_labels = train_inputs[:0], train_labels[:0]
    splits = {
        "train": (train_inputs, train_labels),
        "validation": (validation_inputs, validation_labels),
        "test": (test_inputs, test_labels),
    }
    # Images stay uint8; a table's values become float32, the precision the model computes in.
    dtype = np.uint8 if train_inputs.dtype == np.uint8 else np.float32
    return {
        name: Split(_flatten(inputs).astype(dtype, copy=False), labels.astype(np.int64))
        for name, (inputs, labels) in splits.items()
    }


def class_counts(splits: dict[str, Split], num_classes: int) -> dict[str, dict[str, int]]:
    return {
        name: {str(label): int(count) for label, count in enumerate(np.bincount(labels, minlength=num_classes))}
        for name, (_, labels) in splits.items()
    }


def save_samples_figure(
    inputs: np.ndarray, labels: np.ndarray, path: Path, *, class_names: list[str], seed: int
) -> None:
    """Images: a grid of random examples titled with their class. Tables: each feature's histogram per class."""
    if inputs.ndim >= 3:
        with atomic_path(path) as temporary:
            _image_grid(inputs, labels, class_names, seed).save(temporary, format="png")
    else:
        from pipeline.figures import save_figure  # Matplotlib: 0.4 s of imports, only for tables

        save_figure(_feature_histograms(inputs, labels, class_names), path)


def _image_grid(images: np.ndarray, labels: np.ndarray, class_names: list[str], seed: int) -> Image.Image:
    """The chosen images, enlarged, tiled into one picture with each one's class name above it (dark
    ink on white for grayscale), drawn with Pillow."""
    chosen = np.random.default_rng(seed).choice(len(images), size=min(GRID_SIZE**2, len(images)), replace=False)
    height, width = images.shape[1:3]
    scale = max(1, 96 // max(height, width))
    title, gap, header = 18, 6, 28  # pixels: a name above each image, between columns, the heading
    cell_width, cell_height = width * scale + gap, title + height * scale
    gray = images.ndim == 3
    picture = Image.new(
        "L" if gray else "RGB", (GRID_SIZE * cell_width + gap, header + GRID_SIZE * cell_height), "white"
    )
    draw = ImageDraw.Draw(picture)
    heading, label = ImageFont.load_default(size=16), ImageFont.load_default(size=12)
    draw.text((picture.width / 2, 6), "Random training examples", fill="black", font=heading, anchor="ma")
    for position, index in enumerate(chosen):
        left = gap + (position % GRID_SIZE) * cell_width
        top = header + (position // GRID_SIZE) * cell_height + title
        pixels = images[index].astype(np.uint8)
        image = Image.fromarray(255 - pixels if gray else pixels)
        picture.paste(image.resize((width * scale, height * scale), Image.Resampling.NEAREST), (left, top))
        name = class_names[labels[index]]
        draw.text((left + width * scale / 2, top - 2), name, fill="black", font=label, anchor="md")
    return picture


def _feature_histograms(table: np.ndarray, labels: np.ndarray, class_names: list[str]):
    import matplotlib.pyplot as plt

    columns = 4
    rows = -(-table.shape[1] // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.4 * rows), squeeze=False)
    for axis in axes.flat[table.shape[1] :]:
        axis.axis("off")
    for feature, axis in enumerate(axes.flat[: table.shape[1]]):
        for label, name in enumerate(class_names):
            axis.hist(table[labels == label, feature], bins=20, alpha=0.5, label=name)
        axis.set_title(f"feature {feature}", fontsize=9)
    axes.flat[0].legend(fontsize=8)
    figure.suptitle("Training features per class")
    return figure


def _held_out(inputs: np.ndarray, labels: np.ndarray, fraction: float, seed: int):
    """(kept inputs, kept labels, held-out inputs, held-out labels), `fraction` of the rows held out."""
    kept, held_out = _stratified_rows(labels, seed, test_size=fraction)
    return inputs[kept], labels[kept], inputs[held_out], labels[held_out]


def _stratified_subset(inputs: np.ndarray, labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    kept, _ = _stratified_rows(labels, seed, train_size=size)
    return inputs[kept], labels[kept]


def _stratified_rows(labels: np.ndarray, seed: int, **size) -> tuple[np.ndarray, np.ndarray]:
    """(kept rows, held-out rows): each class keeps its share on both sides, drawn with `seed`."""
    try:
        return train_test_split(np.arange(len(labels)), stratify=labels, random_state=seed, **size)
    except ValueError as error:  # e.g. a class with one example, or fewer rows on a side than classes
        raise DataError(f"cannot split the {len(labels)} examples keeping every class on both sides: {error}") from None


def _flatten(inputs: np.ndarray) -> np.ndarray:
    # e.g. 28x28 -> 784 features for the Dense input layer.
    features = int(np.prod(inputs.shape[1:]))  # explicit: -1 cannot be inferred for an empty split
    return inputs.reshape(len(inputs), features)


def main() -> None:
    params = load_params()
    dataset = params.dataset
    raw = read_dataset(dataset, RAW_DIRECTORY)
    save_samples_figure(
        raw.train_inputs, raw.train_labels, SAMPLES_FILE, class_names=dataset.class_names, seed=params.seed
    )
    splits = preprocess(raw, dataset=dataset, seed=params.seed)
    for name, split in splits.items():
        save_split(PROCESSED_DIRECTORY / f"{name}.npz", split)
        logger.info("%s: %d examples of %d features", name, *split.inputs.shape)
    write_json(CLASS_COUNTS_FILE, class_counts(splits, dataset.num_classes))


if __name__ == "__main__":
    run_stage(main)
