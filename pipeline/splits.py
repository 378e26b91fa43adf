"""The arrays the stages pass to each other: one .npz file per split."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.config import DatasetConfig
from pipeline.errors import DataError
from pipeline.files import atomic_path
from pipeline.paths import repair_hint, rerun_hint


class Split(NamedTuple):
    """Examples and their class ids (count,). As the stages pass a split on, its inputs are flat and raw
    (count, features): uint8 pixels or float32 table values."""

    inputs: np.ndarray
    labels: np.ndarray


def save_split(path: Path, split: Split) -> None:
    """Write a split's arrays to `path` (.npz), atomically."""
    with atomic_path(path) as temporary:
        np.savez(temporary, inputs=split.inputs, labels=split.labels)


def load_split(directory: Path, name: str) -> Split:
    """The arrays of split `name` (train, validation or test) written by the preprocess stage."""
    path = directory / f"{name}.npz"
    try:
        with np.load(path, allow_pickle=False) as arrays:
            split = Split(arrays["inputs"], arrays["labels"])
    except FileNotFoundError:
        raise DataError(f"{path} not found: {rerun_hint('preprocess')}") from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path} is corrupt ({type(error).__name__}: {error}); {repair_hint('preprocess')}") from None
    if split.inputs.ndim != 2 or split.labels.ndim != 1 or len(split.inputs) != len(split.labels):
        raise DataError(
            f"{path} holds inputs of shape {split.inputs.shape} and labels of shape {split.labels.shape}, "
            f"expected (count, features) and (count,); {repair_hint('preprocess')}"
        )
    if split.inputs.dtype.kind not in "uif" or split.labels.dtype.kind not in "ui":
        raise DataError(
            f"{path} holds {split.inputs.dtype} inputs and {split.labels.dtype} labels, expected numbers and "
            f"integer class ids; {repair_hint('preprocess')}"
        )
    if split.inputs.dtype.kind == "f" and not np.isfinite(split.inputs).all():
        # A NaN input makes a NaN loss and a meaningless score: refuse it before training or scoring.
        raise DataError(f"{path} holds NaN or infinite inputs; {repair_hint('preprocess')}")
    return split


def load_splits(directory: Path, names: list[str], dataset: DatasetConfig) -> list[Split]:
    """Splits `names` (load_split) checked against `dataset` before any run starts, failing in one line: their
    width, labels among its classes, none empty (but validation at validation_fraction 0), every class in train."""
    splits = [load_split(directory, name) for name in names]
    for name, (inputs, labels) in zip(names, splits, strict=True):
        path, repair = directory / f"{name}.npz", repair_hint("preprocess")
        if inputs.shape[1] != dataset.num_features:
            raise DataError(
                f"{path} holds examples of {inputs.shape[1]} values, expected {dataset.num_features} "
                f"(dataset {dataset.name}, input_shape {dataset.input_shape}); {repair}"
            )
        if len(labels) == 0:
            if name == "validation" and dataset.validation_fraction == 0:
                continue
            raise DataError(f"{path} holds no examples, expected at least one; {repair}")
        if labels.min() < 0 or labels.max() >= dataset.num_classes:
            raise DataError(
                f"{path} holds labels from {labels.min()} to {labels.max()}, expected class ids 0 to "
                f"{dataset.num_classes - 1} (dataset {dataset.name}); {repair}"
            )
        # A class the model never sees in training cannot be learnt: its test scores would mean nothing.
        missing = np.isin(np.arange(dataset.num_classes), labels, invert=True)
        if name == "train" and missing.any():
            missing_names = ", ".join(np.asarray(dataset.class_names)[missing])
            raise DataError(
                f"{path} holds no example of class {missing_names}, expected every one of the "
                f"{dataset.num_classes} classes of dataset {dataset.name}; {repair}"
            )
    return splits


def training_targets(labels: np.ndarray, *, loss: str, task: str, num_classes: int) -> np.ndarray:
    """What the loss compares the output with: class indices, or one-hot rows for mse over a softmax."""
    if loss == "mse" and task == "multiclass":
        return np.eye(num_classes, dtype="float32")[labels]
    return labels
