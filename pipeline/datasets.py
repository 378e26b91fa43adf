"""Reading raw dataset files and the arrays the stages pass to each other.

Every decoder validates before it allocates: a corrupted or hostile file raises
DataError naming the file and the problem, never an IndexError or a huge
allocation sized from an unchecked header.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

# IDX magic numbers: two zero bytes, a type code (0x08 = unsigned byte) and the
# number of dimensions (http://yann.lecun.com/exdb/mnist/).
IDX_UNSIGNED_BYTE = 0x08

RAW_DIRECTORY = Path("data/raw")
PROCESSED_DIRECTORY = Path("data/processed")


def read_idx(path: Path, dimensions: int, max_bytes: int = 1 << 30) -> np.ndarray:
    """Decode a (gzipped) IDX file of unsigned bytes with `dimensions` dimensions."""
    data = _read_maybe_gzipped(path, max_bytes)
    header_size = 4 + 4 * dimensions
    if len(data) < header_size:
        raise DataError(f"{path}: {len(data)} bytes is too short for an IDX header of {header_size} bytes")
    zero, type_code, found_dimensions = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or type_code != IDX_UNSIGNED_BYTE or found_dimensions != dimensions:
        raise DataError(
            f"{path}: magic number {data[:4].hex()} is not an IDX file of unsigned bytes with {dimensions} "
            f"dimension(s) (expected 0000080{dimensions})"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dimensions))
    expected_payload = int(np.prod(shape, dtype=np.int64))
    payload = len(data) - header_size
    if payload != expected_payload:
        raise DataError(
            f"{path}: header announces shape {shape} ({expected_payload:,} bytes of data), "
            f"but the file holds {payload:,} bytes of data"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def read_idx_images_and_labels(
    images_path: Path, labels_path: Path, image_shape: tuple[int, int], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 (count, height, width) and labels as uint8 (count,), validated together."""
    images = read_idx(images_path, dimensions=3)
    labels = read_idx(labels_path, dimensions=1)
    if images.shape[1:] != tuple(image_shape):
        raise DataError(f"{images_path}: images are {images.shape[1:]}, expected {tuple(image_shape)}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images):,} images but {labels_path} holds {len(labels):,} labels")
    if len(labels) and labels.max() >= num_classes:
        raise DataError(f"{labels_path}: label {int(labels.max())} found, expected labels 0 to {num_classes - 1}")
    return images, labels


def save_split(path: Path, inputs: np.ndarray, labels: np.ndarray) -> None:
    """Write a split's arrays to `path` (.npz), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, inputs=inputs, labels=labels)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def load_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The (inputs, labels) arrays of one split written by the preprocess stage."""
    path = directory / f"{split}.npz"
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return arrays["inputs"], arrays["labels"]
    except FileNotFoundError:
        raise DataError(f"{path} not found: run the preprocess stage first (dvc repro preprocess)") from None
    except (KeyError, ValueError, OSError, zlib.error) as error:
        raise DataError(f"{path} is not a valid split file (expected arrays 'inputs' and 'labels'): {error}") from None


def _read_maybe_gzipped(path: Path, max_bytes: int) -> bytes:
    try:
        with path.open("rb") as stream:
            compressed = stream.read(2) == b"\x1f\x8b"
        opener = gzip.open if compressed else open
        with opener(path, "rb") as stream:
            # Read one byte past the limit to tell "at the limit" from "over it".
            data = stream.read(max_bytes + 1)
    except FileNotFoundError:
        raise DataError(f"{path} not found: run the download stage first (dvc repro download)") from None
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot be decompressed ({error}); delete it and download again") from None
    if len(data) > max_bytes:
        raise DataError(f"{path}: decompresses to more than {max_bytes:,} bytes")
    return data
