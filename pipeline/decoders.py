"""Decoding a dataset's raw files (IDX, the CIFAR python archive, CSV) into arrays.

Every decoder validates before it allocates: a corrupted or hostile file raises DataError naming the file and
the problem, never an IndexError or a huge allocation sized from an unchecked header.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import pickle
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from pipeline.config import CsvLayout, DatasetConfig, FileSpec
from pipeline.errors import DataError
from pipeline.paths import rerun_hint
from pipeline.splits import Split

CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{number}" for number in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
CIFAR_FEATURES = 32 * 32 * 3
# Larger than any real member or table, small enough to refuse a decompression bomb.
MAX_MEMBER_BYTES = 256 << 20
MAX_TABLE_BYTES = 256 << 20


def read_dataset(dataset: DatasetConfig, directory: Path) -> tuple[Split, Split | None]:
    """The training and test examples: images as uint8 (count, *input_shape), tables as float64 (count, features).
    No test split where the format publishes none (csv): preprocess holds one out."""
    files = {role: directory / spec.name for role, spec in dataset.files.items()}
    if dataset.format == "idx":
        shape, classes = tuple(dataset.input_shape), dataset.num_classes
        train = read_idx_images_and_labels(files["train_images"], files["train_labels"], shape, classes)
        return train, read_idx_images_and_labels(files["test_images"], files["test_labels"], shape, classes)
    if dataset.format == "cifar_python":
        return read_cifar_archive(files["archive"], dataset.files["archive"], dataset.num_classes)
    return read_csv_table(files["table"], dataset.csv, dataset.num_classes), None


def read_idx(path: Path, dimensions: int, max_bytes: int = 1 << 30) -> np.ndarray:
    """Decode a (gzipped) IDX file of unsigned bytes with `dimensions` dimensions."""
    data = _read_file(path, max_bytes)
    header_size = 4 + 4 * dimensions
    if len(data) < header_size:
        raise DataError(f"{path}: {len(data)} bytes is too short for an IDX header of {header_size} bytes")
    # The magic number: two zero bytes, a type code (0x08: unsigned byte) and the number of
    # dimensions (http://yann.lecun.com/exdb/mnist/).
    if data[:3] != b"\x00\x00\x08" or data[3] != dimensions:
        raise DataError(
            f"{path}: magic number {data[:4].hex()} is not an IDX file of unsigned bytes with {dimensions} "
            f"dimension(s) (expected 0000080{dimensions})"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dimensions))
    expected_payload = math.prod(shape)  # exact: absurd header dimensions must not overflow
    payload = len(data) - header_size
    if payload != expected_payload:
        raise DataError(
            f"{path}: header announces shape {shape} ({expected_payload:,} bytes of data), "
            f"but the file holds {payload:,} bytes of data"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def read_idx_images_and_labels(
    images_path: Path, labels_path: Path, image_shape: tuple[int, int], num_classes: int
) -> Split:
    """Images as uint8 (count, height, width) and labels as uint8 (count,), validated together."""
    images = read_idx(images_path, dimensions=3)
    labels = read_idx(labels_path, dimensions=1)
    if images.shape[1:] != tuple(image_shape):
        raise DataError(f"{images_path}: images are {images.shape[1:]}, expected {tuple(image_shape)}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images):,} images but {labels_path} holds {len(labels):,} labels")
    if len(labels) and labels.max() >= num_classes:
        raise DataError(f"{labels_path}: label {int(labels.max())} found, expected labels 0 to {num_classes - 1}")
    return Split(images, labels)


def _read_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of `path`, decompressed if gzipped: DataError if it is missing, unreadable or too large."""
    try:
        with path.open("rb") as stream:
            compressed = stream.read(2) == b"\x1f\x8b"
            stream.seek(0)
            return _read_at_most(gzip.GzipFile(fileobj=stream) if compressed else stream, max_bytes, str(path))
    except FileNotFoundError:
        raise DataError(f"{path} not found: {rerun_hint('download')}") from None
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot be decompressed ({error}); delete it and download again") from None


def read_cifar_archive(path: Path, spec: FileSpec, num_classes: int) -> tuple[Split, Split]:
    """The CIFAR "python version" archive: five training batches and one test batch of pickled dicts."""
    # Unpickling runs code chosen by the file: only ever on the verified archive,
    # and only with the restricted unpickler below.
    spec.verify(path)
    wanted = {*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH}
    batches: dict[str, Split] = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                if member.name.startswith("/") or ".." in PurePosixPath(member.name).parts or "\\" in member.name:
                    raise DataError(
                        f"{path}: unsafe member name {member.name!r} (absolute or leading outside the archive)"
                    )
                name, source = PurePosixPath(member.name).name, f"{path}:{member.name}"
                if name in wanted and member.isfile():
                    data = _read_at_most(archive.extractfile(member), MAX_MEMBER_BYTES, source)
                    batches[name] = _cifar_batch(source, data, num_classes)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: not a readable tar.gz archive ({error})") from None
    if missing := sorted(wanted - set(batches)):
        raise DataError(f"{path}: the archive lacks the batches {', '.join(missing)}")
    train_inputs = np.concatenate([batches[name].inputs for name in CIFAR_TRAIN_BATCHES])
    train_labels = np.concatenate([batches[name].labels for name in CIFAR_TRAIN_BATCHES])
    return Split(train_inputs, train_labels), batches[CIFAR_TEST_BATCH]


def read_csv_table(path: Path, layout: CsvLayout, num_classes: int) -> Split:
    """Numeric features (float64) and integer labels from a delimited text table."""
    try:
        text = _read_file(path, MAX_TABLE_BYTES).decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from None
    columns = max(*layout.feature_columns, layout.label_column) + 1
    features, labels = [], []
    try:
        reader = csv.reader(io.StringIO(text), delimiter=layout.delimiter, strict=True)
        for line_number, row in enumerate(reader, start=1):
            if line_number <= layout.header_rows or not row:
                continue
            if len(row) != columns:
                raise DataError(f"{path}, line {line_number}: {len(row)} columns, expected {columns}")
            features.append([_number(path, line_number, row[column]) for column in layout.feature_columns])
            labels.append(_label(path, line_number, row[layout.label_column], num_classes))
    except csv.Error as error:
        raise DataError(f"{path}: malformed CSV ({error})") from None
    if not labels:
        raise DataError(f"{path}: no data rows")
    return Split(np.asarray(features, dtype=np.float64), np.asarray(labels, dtype=np.uint8))


def _read_at_most(stream, limit: int, source: str) -> bytes:
    """All of `stream`, in chunks (read(limit) would allocate all of `limit` up front); DataError past `limit`."""
    chunks, total = [], 0
    while total <= limit and (chunk := stream.read(min(1 << 20, limit + 1 - total))):
        chunks.append(chunk)
        total += len(chunk)
    if total > limit:
        raise DataError(f"{source}: more than {limit:,} bytes")
    return b"".join(chunks)


class CifarUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR batch holds: dicts, lists, bytes, ints and NumPy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _cifar_batch(source: str, data: bytes, num_classes: int) -> Split:
    try:
        batch = CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as error:  # any failure of a hostile pickle is a bad file
        raise DataError(f"{source}: not a CIFAR batch ({type(error).__name__}: {error})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{source}: expected a dict with keys b'data' and b'labels'")
    images, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2:
        raise DataError(f"{source}: b'data' must be a 2-D uint8 array")
    if images.shape[1] != CIFAR_FEATURES:
        raise DataError(f"{source}: images have {images.shape[1]} values, expected {CIFAR_FEATURES} (32x32x3)")
    if not isinstance(labels, list) or not all(type(label) is int for label in labels):
        raise DataError(f"{source}: b'labels' must be a list of integers")
    if len(labels) != len(images):
        raise DataError(f"{source}: {len(images):,} images but {len(labels):,} labels")
    if labels and not 0 <= min(labels) <= max(labels) < num_classes:
        raise DataError(f"{source}: labels outside 0 to {num_classes - 1}")
    # Rows hold the red, green and blue 32x32 planes in turn: to (count, height, width, channel).
    return Split(images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(labels, dtype=np.uint8))


def _number(path: Path, line_number: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}, line {line_number}: {text!r} is not a number") from None
    if not np.isfinite(value):
        raise DataError(f"{path}, line {line_number}: {text!r} is not a finite number")
    return value


def _label(path: Path, line_number: int, text: str, num_classes: int) -> int:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value.is_integer() and 0 <= value < num_classes):
        raise DataError(f"{path}, line {line_number}: label {text!r}, expected an integer from 0 to {num_classes - 1}")
    return int(value)
