"""Reading what `mlp predict` classifies: images, .npz arrays and .csv rows, as raw feature rows.

Images become the dataset's pixels (0 to 255, flattened as the preprocess stage
flattens); rows keep the units of the dataset's raw files. The model scales them.
"""

from __future__ import annotations

import csv
import io
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.dataset_config import DatasetConfig
from pipeline.decoders import MAX_TABLE_BYTES
from pipeline.errors import DataError

TABLE_SUFFIXES = (".npz", ".csv")
# 16-bit greyscale: Pillow's conversion to 8 bits clips at 255 instead of scaling.
WIDE_GREY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def read_inputs(path: Path, *, dataset: DatasetConfig, invert: bool = False) -> tuple[list[str], np.ndarray]:
    """(a name per example, float64 rows of the dataset's raw features)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path, dataset=dataset)
    if suffix == ".csv":
        return _read_csv(path, dataset=dataset)
    mode = image_mode(dataset)
    if mode is None:
        raise DataError(
            f"{path}: the model takes {dataset.num_features} features, not an image: "
            f"give rows in an .npz (array `inputs`) or .csv file"
        )
    pixels = read_image(path, mode=mode, height=dataset.input_shape[0], width=dataset.input_shape[1])
    if invert:
        pixels = 255.0 - pixels
    return [str(path)], pixels.reshape(1, -1)


def image_mode(dataset: DatasetConfig) -> str | None:
    """Pillow's mode for the dataset's images: greyscale (height, width[, 1]) or RGB (height, width, 3)."""
    shape = dataset.input_shape
    if len(shape) == 2 or (len(shape) == 3 and shape[2] == 1):
        return "L"
    if len(shape) == 3 and shape[2] == 3:
        return "RGB"
    return None


def read_image(path: Path, *, mode: str, height: int, width: int) -> np.ndarray:
    """Pixels 0 to 255 as float64 (height, width[, 3]), whatever the file's size, mode and orientation."""
    try:
        with Image.open(path) as image:
            # Phones store a photo's rotation in EXIF instead of rotating the pixels.
            upright = ImageOps.exif_transpose(image)
            converted = _convert(upright, mode)
            # Shrinking averages the pixels each output pixel covers (thin strokes are
            # not lost between samples, no ringing); enlarging interpolates.
            shrinking = converted.width >= width and converted.height >= height
            resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
            resized = converted.resize((width, height), resample)
            return np.asarray(resized, dtype=np.float64)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: not an image Pillow can read ({error})") from None


def _convert(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in WIDE_GREY_MODES:
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        # Transparent pixels become black, the background of MNIST's digits.
        image = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image)
    return image.convert(mode)


def _read_npz(path: Path, *, dataset: DatasetConfig) -> tuple[list[str], np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path}: not a readable .npz file ({error})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, expected an .npz archive holding an array `inputs`")
    try:
        if "inputs" not in loaded.files:
            raise DataError(f"{path}: no array `inputs` (it holds {', '.join(loaded.files) or 'nothing'})")
        inputs = loaded["inputs"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path}: array `inputs` is unreadable ({error})") from None
    finally:
        loaded.close()
    if inputs.dtype.kind not in "biuf":
        raise DataError(f"{path}: `inputs` holds {inputs.dtype} values, expected numbers")
    if inputs.ndim > 2 and list(inputs.shape[1:]) == dataset.input_shape:
        inputs = inputs.reshape(len(inputs), -1)  # whole images, as the preprocess stage flattens them
    elif inputs.ndim == 1:
        inputs = inputs.reshape(1, -1)  # one example
    if inputs.ndim != 2 or not len(inputs):
        raise DataError(f"{path}: `inputs` has shape {inputs.shape}, expected (count, {dataset.num_features})")
    rows = _features(path, inputs.astype(np.float64), dataset=dataset)
    if not np.all(np.isfinite(rows)):
        raise DataError(f"{path}: `inputs` holds NaN or infinite values")
    return [f"{path}[{index}]" for index in range(len(rows))], rows


def _read_csv(path: Path, *, dataset: DatasetConfig) -> tuple[list[str], np.ndarray]:
    if path.stat().st_size > MAX_TABLE_BYTES:
        raise DataError(f"{path}: larger than {MAX_TABLE_BYTES:,} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not readable UTF-8 text ({error})") from None
    delimiter = dataset.csv.delimiter if dataset.csv else ","
    names, rows = [], []
    header_seen = False
    try:
        for line_number, row in enumerate(csv.reader(io.StringIO(text), delimiter=delimiter), start=1):
            if not any(cell.strip() for cell in row):
                continue
            values = _numbers(row)
            if isinstance(values, str):
                if not rows and not header_seen:  # a header line: column names
                    header_seen = True
                    continue
                raise DataError(f"{path}, line {line_number}: {values!r} is not a finite number")
            if rows and len(values) != len(rows[0]):
                raise DataError(
                    f"{path}, line {line_number}: {len(values)} columns, the lines above have {len(rows[0])}"
                )
            names.append(f"{path}:{line_number}")
            rows.append(values)
    except csv.Error as error:
        raise DataError(f"{path}: malformed CSV ({error})") from None
    if not rows:
        raise DataError(f"{path}: no rows of numbers")
    return names, _features(path, np.asarray(rows, dtype=np.float64), dataset=dataset)


def _numbers(row: list[str]) -> list[float] | str:
    """The row's values, or the first cell that is not a finite number."""
    values = []
    for cell in row:
        try:
            value = float(cell)
        except ValueError:
            return cell
        if not np.isfinite(value):
            return cell
        values.append(value)
    return values


def _features(path: Path, rows: np.ndarray, *, dataset: DatasetConfig) -> np.ndarray:
    """The model's features of each row; rows in a csv dataset's own layout (with the label) are accepted too."""
    width = rows.shape[1]
    if width == dataset.num_features:
        return rows
    layout = dataset.csv
    if layout is not None and width == max(*layout.feature_columns, layout.label_column) + 1:
        return rows[:, layout.feature_columns]
    raise DataError(f"file {path} has {width} columns, the model takes {dataset.num_features}")
