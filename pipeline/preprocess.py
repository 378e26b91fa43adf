"""Stage `preprocess`: decode the raw files, hold out the validation (and where needed test) examples, flatten.

Reads params `seed`, `dataset` and data/raw/<dataset>/; writes data/processed/<dataset>/{train,validation,test}.npz,
reports/class_counts.json and reports/samples.png. Each held-out share is stratified and seeded; values stay raw,
as the model scales its inputs itself (pipeline.model.input_scaling), so the served model takes what the files hold.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import train_test_split

from pipeline.config import DatasetConfig, load_params
from pipeline.decoders import read_dataset
from pipeline.errors import DataError
from pipeline.figures import save_figure
from pipeline.files import write_json
from pipeline.paths import CLASS_COUNTS_FILE, SAMPLES_FILE, processed_directory, raw_directory
from pipeline.splits import Split, save_split
from pipeline.stage import run_stage

logger = logging.getLogger(__name__)

GRID_SIZE = 5


def preprocess(train: Split, test: Split | None, *, dataset: DatasetConfig, seed: int) -> dict[str, Split]:
    """Split, subsample and flatten the decoded examples; return {split name: Split} with the raw values."""
    if test is None:
        train, test = _held_out(train, seed, test_size=dataset.test_fraction)
    if (size := dataset.max_train_samples) is not None and size < len(train.labels):
        train, _ = _held_out(train, seed, train_size=size)
    if (size := dataset.max_test_samples) is not None and size < len(test.labels):
        test, _ = _held_out(test, seed, train_size=size)
    if dataset.validation_fraction > 0:
        train, validation = _held_out(train, seed, test_size=dataset.validation_fraction)
    else:
        validation = Split(train.inputs[:0], train.labels[:0])
    # Images stay uint8; a table's values become float32, the precision the model computes in.
    dtype = np.uint8 if train.inputs.dtype == np.uint8 else np.float32
    # Flat, e.g. 28x28 -> 784 features for the Dense input layer; the width is explicit because
    # -1 cannot be inferred for an empty split.
    features = int(np.prod(train.inputs.shape[1:]))
    return {
        name: Split(inputs.reshape(len(inputs), features).astype(dtype, copy=False), labels.astype(np.int64))
        for name, (inputs, labels) in {"train": train, "validation": validation, "test": test}.items()
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
        chosen = np.random.default_rng(seed).choice(len(inputs), size=min(GRID_SIZE**2, len(inputs)), replace=False)
        figure, axes = plt.subplots(GRID_SIZE, GRID_SIZE, figsize=(6, 6.4))
        for axis in axes.flat:
            axis.axis("off")
        for axis, index in zip(axes.flat, chosen, strict=False):
            axis.imshow(inputs[index], cmap="gray_r", vmin=0, vmax=255)  # grey: dark ink on white; RGB ignores the map
            axis.set_title(class_names[labels[index]], fontsize=9)
        figure.suptitle("Random training examples")
    else:
        columns = 4
        rows = -(-inputs.shape[1] // columns)
        figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.4 * rows), squeeze=False)
        for axis in axes.flat[inputs.shape[1] :]:
            axis.axis("off")
        for feature, axis in enumerate(axes.flat[: inputs.shape[1]]):
            for label, name in enumerate(class_names):
                axis.hist(inputs[labels == label, feature], bins=20, alpha=0.5, label=name)
            axis.set_title(f"feature {feature}", fontsize=9)
        axes.flat[0].legend(fontsize=8)
        figure.suptitle("Training features per class")
    save_figure(figure, path)


def _held_out(split: Split, seed: int, **size) -> tuple[Split, Split]:
    """(kept, held out), each class keeping its share on both sides, drawn with `seed`; `size` is
    train_test_split's test_size or train_size."""
    inputs, labels = split
    try:
        kept, held_out = train_test_split(np.arange(len(labels)), stratify=labels, random_state=seed, **size)
    except ValueError as error:  # e.g. a class with one example, or fewer rows on a side than classes
        raise DataError(f"cannot split the {len(labels)} examples keeping every class on both sides: {error}") from None
    return Split(inputs[kept], labels[kept]), Split(inputs[held_out], labels[held_out])


def main() -> None:
    params = load_params()
    dataset = params.dataset
    train, test = read_dataset(dataset, raw_directory(dataset.name))
    save_samples_figure(*train, SAMPLES_FILE, class_names=dataset.class_names, seed=params.seed)
    splits = preprocess(train, test, dataset=dataset, seed=params.seed)
    for name, split in splits.items():
        save_split(processed_directory(dataset.name) / f"{name}.npz", split)
        logger.info("%s: %d examples of %d features", name, *split.inputs.shape)
    write_json(CLASS_COUNTS_FILE, class_counts(splits, dataset.num_classes))


if __name__ == "__main__":
    run_stage(main)
