"""Classify images or feature rows with a trained model, the Keras tutorials' last step.

    mlp predict digit.png photo.jpg                        # data/model/model.keras, params.yaml's dataset
    mlp predict --model models:/mnist-mlp@champion digit.png
    mlp predict --model models:/pima-mlp/3 --json patients.csv

A registered model (from the MLflow store at MLFLOW_TRACKING_URI, or mlflow.db) brings the dataset
configuration its run recorded. Images (any format, size and mode Pillow reads; transparent pixels
the paper) become the dataset's images. A drawing for a 28x28 grey dataset such as MNIST is prepared
as MNIST's digits were: made light on dark (a light border means dark ink; --background says it when
the border misleads), cropped to its ink, fitted in 20x20 keeping its aspect ratio and centred by its
centre of mass; an image already 28x28 is taken as it is. Other images are resized whole. Feature
rows, in an .npz file (array `inputs`, e.g. data/processed/mnist/test.npz) or a .csv file (a header line is
skipped), are raw values in the units of the dataset's raw files: the model scales its inputs itself.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import tempfile
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, ImageStat
from pydantic import ValidationError

from pipeline.config import DatasetConfig, load_params, read_yaml
from pipeline.decoders import MAX_TABLE_BYTES
from pipeline.errors import ConfigError, DataError
from pipeline.paths import MODEL_FILE

if TYPE_CHECKING:
    from pipeline.classifier import Classifier


# What `--background` may say of a drawing.
BACKGROUNDS = ("auto", "dark", "light")
# MNIST's images, and the box its digits were scaled to fit (LeCun et al.), as (height, width).
MNIST_SIZE, MNIST_BOX = (28, 28), (20, 20)
# A pixel is ink, for finding a drawing's bounding box, above this level once the strongest stroke is 255:
# a quarter of it, so that the anti-aliased rims of strokes count and faint smudges do not.
INK_LEVEL = 64


@dataclass(frozen=True)
class Prediction:
    input: str
    class_index: int
    class_name: str
    probability: float
    probabilities: dict[str, float]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image, .npz or .csv files")
    parser.add_argument(
        "--model", default=str(MODEL_FILE), help="a .keras file, models:/<name>@<alias> or models:/<name>/<version>"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON list, with every class's probability")
    parser.add_argument(
        "--background",
        choices=BACKGROUNDS,
        default="auto",
        help="a drawing's background, for MNIST-like datasets: auto (from the border pixels), dark or light",
    )


def run(arguments: argparse.Namespace) -> None:
    predictions = predict(arguments.inputs, model=arguments.model, background=arguments.background)
    if arguments.json:
        print(json.dumps([asdict(item) for item in predictions], indent=2))
        return
    rows = [("input", "class", "probability")]
    rows += [(item.input, item.class_name, f"{item.probability:.4f}") for item in predictions]
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    print("\n".join(f"{name:<{widths[0]}}  {label:<{widths[1]}}  {p:>11}" for name, label, p in rows))


def predict(inputs: list[Path], *, model: str, background: str = "auto") -> list[Prediction]:
    """The predicted class of every example in `inputs`, with its probability."""
    if missing := next((path for path in inputs if not path.is_file()), None):
        raise DataError(f"{missing}: no such file")
    classifier, dataset = load_classifier(model)
    # Every input is read before anything is predicted: a bad one fails the whole call, with its name.
    read = [read_inputs(path, dataset=dataset, background=background) for path in inputs]
    names = [name for path_names, _ in read for name in path_names]
    answers = classifier.predict(None, np.concatenate([rows for _, rows in read]))
    return [
        Prediction(
            name, dataset.class_names.index(row["class"]), row["class"], row["probability"], row["probabilities"]
        )
        for name, row in zip(names, answers.to_dict(orient="records"), strict=True)
    ]


def load_classifier(model: str) -> tuple[Classifier, DatasetConfig]:
    """The classifier MLflow serves, around the model (a .keras file or a models:/ URI), and the dataset
    configuration it was trained with."""
    if model.startswith("models:/"):
        return _registered_model(model)
    # Imported here rather than at the top: `mlp predict --help` and a wrong argument answer at once,
    # and only a prediction waits the seconds TensorFlow takes to load.
    from pipeline.classifier import Classifier
    from pipeline.evaluate import load_model

    keras_model = load_model(Path(model))
    dataset, width = load_params().dataset, keras_model.input_shape[-1]
    if width != dataset.num_features:  # params.yaml changed since the model was trained
        raise ConfigError(
            f"{model} takes {width} features, but dataset {dataset.name} has {dataset.num_features} "
            f"(input_shape {dataset.input_shape}): run `dvc repro` for the current params.yaml"
        )
    return Classifier(keras_model, dataset.class_names), dataset


def _registered_model(uri: str) -> tuple[Classifier, DatasetConfig]:
    match = re.fullmatch(r"models:/(?P<name>[^/@]+)(?:/(?P<version>[0-9]+)|@(?P<alias>[^/@]+))", uri)
    if match is None:
        raise ConfigError(f"--model {uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    import mlflow.tensorflow  # loads TensorFlow: see load_classifier

    from pipeline.classifier import Classifier
    from pipeline.tracking import registered_model_store

    with registered_model_store(uri) as store:
        name, version, alias = match.group("name", "version", "alias")
        client = mlflow.MlflowClient(store)
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
        recorded = f"runs:/{found.run_id}/config/params.yaml"
        params = read_yaml(mlflow.artifacts.load_text(recorded), recorded)
        try:
            dataset = DatasetConfig.model_validate(params.get("dataset") if isinstance(params, dict) else None)
        except ValidationError as error:
            first = error.errors()[0]
            problem = ".".join(["dataset", *map(str, first["loc"])]) + f": {first['msg']}"
            raise ConfigError(
                f"--model {uri}: its run's config/params.yaml holds no valid dataset config ({problem})"
            ) from None
        with tempfile.TemporaryDirectory() as directory:
            # The version just resolved, even if the alias moves meanwhile.
            version_uri = f"models:/{name}/{found.version}"
            loaded = mlflow.pyfunc.load_model(version_uri, dst_path=directory)
            if "tensorflow" in loaded.metadata.flavors:  # logged before the classifier: the bare Keras model
                keras_model = mlflow.tensorflow.load_model(version_uri, dst_path=directory)
                return Classifier(keras_model, dataset.class_names), dataset
            # The classifier itself, not MLflow's wrapper, which takes only the signature's uint8 pixels.
            return loaded.unwrap_python_model(), dataset


def read_inputs(path: Path, *, dataset: DatasetConfig, background: str = "auto") -> tuple[list[str], np.ndarray]:
    """(a name per example, float64 rows of the dataset's raw features)."""
    reader = {".npz": _read_npz, ".csv": _read_csv}.get(path.suffix.lower())
    if reader is not None:
        return reader(path, dataset)
    shape = dataset.input_shape
    # Greyscale for (height, width[, 1]), RGB for (height, width, 3); other shapes are tables.
    mode = {(2, 1): "L", (3, 1): "L", (3, 3): "RGB"}.get((len(shape), shape[2] if len(shape) == 3 else 1))
    if mode is None:
        raise DataError(
            f"{path}: the model takes {dataset.num_features} features, not an image: give .npz or .csv rows"
        )
    image = open_image(path, mode=mode)
    if mode == "L" and shape[:2] == list(MNIST_SIZE):
        pixels = as_mnist_digit(image, background=background, name=path)
    else:
        pixels = resize(image, height=shape[0], width=shape[1])
    return [str(path)], pixels.reshape(1, -1)


def open_image(path: Path, *, mode: str) -> Image.Image:
    """The image in `mode` ("L" or "RGB"), whatever the file's format, mode and orientation."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)  # phones store the rotation in EXIF, not in the pixels
            if image.mode.startswith("I"):  # 16-bit grey: Pillow's conversion to 8 bits would clip at 255
                image = Image.fromarray(np.clip(np.rint(np.asarray(image) / 257.0), 0, 255).astype(np.uint8))
            if image.has_transparency_data:
                # Transparent pixels become the paper: white behind dark strokes (a pen on a drawing app's
                # transparent canvas), else black, MNIST's background.
                rgba = image.convert("RGBA")
                opaque = rgba.getchannel("A")
                dark = opaque.getbbox() is not None and ImageStat.Stat(rgba.convert("L"), opaque).mean[0] < 127.5
                image = Image.alpha_composite(Image.new("RGBA", image.size, "white" if dark else "black"), rgba)
            return image.convert(mode)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: not an image Pillow can read ({error})") from None


def resize(image: Image.Image, *, height: int, width: int) -> np.ndarray:
    """The whole image at the dataset's size: pixels 0 to 255 as float64 (height, width[, 3])."""
    # Shrinking averages what each output pixel covers (thin strokes survive, no ringing).
    shrinking = image.width >= width and image.height >= height
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    return np.asarray(image.resize((width, height), resample), dtype=np.float64)


def as_mnist_digit(image: Image.Image, *, background: str = "auto", name: object = "image") -> np.ndarray:
    """A drawing of any size prepared as MNIST's digits were (LeCun et al.; see the module's docstring).

    `background` "auto" takes the border pixels' median: light means a dark-on-light drawing, inverted."""
    import scipy.ndimage  # here, not at the top: only this preparation needs it, and `--help` need not wait for it

    pixels = np.asarray(image, dtype=np.float64)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    paper = float(np.median(border))
    if background == "light" or (background == "auto" and paper > 127.5):
        pixels, paper = 255.0 - pixels, 255.0 - paper
    if pixels.shape == MNIST_SIZE:
        return pixels
    # Ink above the paper's own grey (a photographed sheet is not black), stretched to MNIST's full strokes.
    ink = np.clip(pixels - paper, 0.0, None)
    if ink.max() < 1.0:
        raise DataError(f"{name}: no drawing found, the image is one colour")
    ink = ink * (255.0 / ink.max())
    rows, columns = np.nonzero(ink > INK_LEVEL)
    box = (columns.min(), rows.min(), columns.max() + 1, rows.max() + 1)
    fitted = ImageOps.contain(Image.fromarray(ink.astype(np.float32)).crop(box), MNIST_BOX, Image.Resampling.BOX)
    # MNIST's digits have their centre of mass at pixel (14, 14), to the nearest pixel.
    centre_row, centre_column = scipy.ndimage.center_of_mass(np.asarray(fitted))
    digit = Image.new("F", MNIST_SIZE[::-1])
    digit.paste(fitted, (round(MNIST_SIZE[1] / 2 - centre_column), round(MNIST_SIZE[0] / 2 - centre_row)))
    return np.asarray(digit, dtype=np.float64)


def _read_npz(path: Path, dataset: DatasetConfig) -> tuple[list[str], np.ndarray]:
    try:
        with path.open("rb") as stream, np.lib.npyio.NpzFile(stream) as archive:
            if "inputs" not in archive.files:
                raise DataError(f"{path}: no array `inputs` (it holds {', '.join(archive.files) or 'nothing'})")
            inputs = archive["inputs"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path}: not a readable .npz file ({error})") from None
    if inputs.dtype.kind not in "biuf":
        raise DataError(f"{path}: `inputs` holds {inputs.dtype} values, expected numbers")
    if inputs.ndim > 2 and list(inputs.shape[1:]) == dataset.input_shape:
        inputs = inputs.reshape(len(inputs), -1)  # whole images, as the preprocess stage flattens them
    inputs = np.atleast_2d(inputs)  # a 1-D array is one example
    if inputs.ndim != 2 or not len(inputs):
        raise DataError(f"{path}: `inputs` has shape {inputs.shape}, expected (count, {dataset.num_features})")
    rows = _features(path, inputs.astype(np.float64), dataset)
    if not np.all(np.isfinite(rows)):
        raise DataError(f"{path}: `inputs` holds NaN or infinite values")
    return [f"{path}[{index}]" for index in range(len(rows))], rows


def _read_csv(path: Path, dataset: DatasetConfig) -> tuple[list[str], np.ndarray]:
    if path.stat().st_size > MAX_TABLE_BYTES:
        raise DataError(f"{path}: larger than {MAX_TABLE_BYTES:,} bytes")
    try:
        with path.open(encoding="utf-8", newline="") as stream:
            reader = csv.reader(stream, delimiter=dataset.csv.delimiter if dataset.csv else ",")
            lines = [(number, row) for number, row in enumerate(reader, start=1) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a readable UTF-8 CSV file ({error})") from None
    if lines and None in map(_number, lines[0][1]):
        lines = lines[1:]  # a header line: column names
    rows = []
    for number, row in lines:
        values = [_number(cell) for cell in row]
        if None in values:
            raise DataError(f"{path}, line {number}: {row[values.index(None)]!r} is not a finite number")
        if rows and len(values) != len(rows[0]):
            raise DataError(f"{path}, line {number}: {len(values)} columns, the lines above have {len(rows[0])}")
        rows.append(values)
    if not rows:
        raise DataError(f"{path}: no rows of numbers")
    return [f"{path}:{number}" for number, _ in lines], _features(path, np.asarray(rows, dtype=np.float64), dataset)


def _number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _features(path: Path, rows: np.ndarray, dataset: DatasetConfig) -> np.ndarray:
    """The model's features of each row; rows in a csv dataset's own layout (with the label) are accepted too."""
    width = rows.shape[1]
    if width == dataset.num_features:
        return rows
    layout = dataset.csv
    if layout is not None and width == max(*layout.feature_columns, layout.label_column) + 1:
        return rows[:, layout.feature_columns]
    raise DataError(f"file {path} has {width} columns, the model takes {dataset.num_features}")
