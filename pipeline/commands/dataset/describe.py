"""What a dataset's files tell about it, read with the pipeline's own decoders.

IDX: the image shape from the images file's header, the number of classes from
the labels. CIFAR: 32x32x3 and 10 classes, the class names from batches.meta.
CSV: the columns (a header is what comes before the first row of numbers) and
the number of classes. Every file is then decoded as the preprocess stage will
decode it, so a file the pipeline would refuse is refused now.
"""

from __future__ import annotations

import csv
import io
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from pipeline.dataset_config import CsvLayout, FileSpec
from pipeline.decoders import (
    MAX_TABLE_BYTES,
    _CifarUnpickler,  # the project's only way to unpickle: builds nothing but plain data
    read_cifar_archive,
    read_csv_table,
    read_idx,
    read_idx_images_and_labels,
)
from pipeline.errors import ConfigError, DataError

CIFAR_CLASSES = 10
MAX_META_BYTES = 1 << 20  # CIFAR-10's batches.meta is 158 bytes


def describe(
    file_format: str,
    paths: dict[str, Path],
    specs: dict[str, dict],
    *,
    class_names: list[str] | None,
    delimiter: str,
    label_column: int | None,
) -> dict:
    """input_shape, num_classes, class_names (None: not known) and, for csv, the csv layout."""
    if file_format == "idx":
        return _describe_idx(paths, class_names=class_names)
    if file_format == "cifar_python":
        return _describe_cifar(paths["archive"], specs["archive"], class_names=class_names)
    return _describe_csv(paths["table"], delimiter=delimiter, label_column=label_column, class_names=class_names)


def _describe_idx(paths: dict[str, Path], *, class_names: list[str] | None) -> dict:
    image_shape = read_idx(paths["train_images"], dimensions=3).shape[1:]
    labels = [read_idx(paths[role], dimensions=1) for role in ("train_labels", "test_labels")]
    num_classes = (
        len(class_names) if class_names else max((int(part.max()) for part in labels if len(part)), default=0) + 1
    )
    for split in ("train", "test"):  # the stages' own checks: counts, shapes, label range
        read_idx_images_and_labels(paths[f"{split}_images"], paths[f"{split}_labels"], image_shape, num_classes)
    return {"input_shape": list(image_shape), "num_classes": num_classes, "class_names": class_names}


def _describe_cifar(path: Path, spec: dict, *, class_names: list[str] | None) -> dict:
    names = class_names or _cifar_label_names(path)
    read_cifar_archive(path, FileSpec(**spec), CIFAR_CLASSES)
    return {"input_shape": [32, 32, 3], "num_classes": CIFAR_CLASSES, "class_names": names}


def _cifar_label_names(path: Path) -> list[str] | None:
    """The class names in the archive's batches.meta, read with the restricted unpickler; None without one."""
    try:
        with tarfile.open(path, "r:gz") as archive:
            member = next((item for item in archive if PurePosixPath(item.name).name == "batches.meta"), None)
            if member is None or not member.isfile() or member.size > MAX_META_BYTES:
                return None
            data = archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: not a readable tar.gz archive ({error})") from None
    try:
        meta = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as error:  # noqa: BLE001 - any failure of a hostile pickle is a bad file
        raise DataError(f"{path}:{member.name}: unreadable ({type(error).__name__}); give --class-names") from None
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != CIFAR_CLASSES or not all(isinstance(n, bytes | str) for n in names):
        raise DataError(f"{path}:{member.name}: no list of {CIFAR_CLASSES} label_names; give --class-names")
    return [name.decode("utf-8", "replace") if isinstance(name, bytes) else name for name in names]


def _describe_csv(path: Path, *, delimiter: str, label_column: int | None, class_names: list[str] | None) -> dict:
    if path.stat().st_size > MAX_TABLE_BYTES:
        raise DataError(f"{path}: larger than {MAX_TABLE_BYTES:,} bytes")
    try:
        with path.open(encoding="utf-8", newline="") as stream:
            rows = list(csv.reader(stream, delimiter=delimiter, strict=True))
    except (UnicodeDecodeError, csv.Error, ValueError) as error:
        raise DataError(f"{path}: not a readable CSV table ({error})") from None
    # Lines before the first row of numbers are a header.
    header_rows = next((index for index, row in enumerate(rows) if row and _numeric(row)), len(rows))
    if header_rows == len(rows):
        raise DataError(f"{path}: no row of numbers separated by {delimiter!r}")
    columns = len(rows[header_rows])
    label = columns - 1 if label_column is None else label_column
    if not 0 <= label < columns:
        raise ConfigError(f"--label-column {label_column}: {path} has columns 0 to {columns - 1}")
    layout = CsvLayout(
        delimiter=delimiter,
        header_rows=header_rows,
        feature_columns=[column for column in range(columns) if column != label],
        label_column=label,
    )
    labels = [float(row[label]) for row in rows[header_rows:] if _numeric(row) and len(row) == columns]
    num_classes = len(class_names) if class_names else int(max(labels, default=0)) + 1
    read_csv_table(path, layout, num_classes)  # the stage's own checks: every row, every label
    return {
        "csv": layout.model_dump(),
        "input_shape": [len(layout.feature_columns)],
        "num_classes": num_classes,
        "class_names": class_names,
    }


def _numeric(row: list[str]) -> bool:
    try:
        [float(cell) for cell in row]
    except ValueError:
        return False
    return True
