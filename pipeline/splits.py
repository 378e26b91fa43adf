"""The arrays the stages pass to each other: one .npz file per split."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.errors import DataError
from pipeline.files import atomic_path
from pipeline.paths import rerun_hint


class Split(NamedTuple):
    """One split as the stages pass it on: float32 inputs (count, features) and integer labels (count,)."""

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
            return Split(arrays["inputs"], arrays["labels"])
    except FileNotFoundError:
        raise DataError(f"{path} not found: {rerun_hint('preprocess')}") from None
    except (KeyError, ValueError, OSError, zlib.error) as error:
        raise DataError(f"{path} is not a valid split file (expected arrays 'inputs' and 'labels'): {error}") from None
