"""`mlp predict`: classify new inputs with a trained model, the Keras tutorials' last step.

    mlp predict digit.png photo.jpg                        # data/model/model.keras, params.yaml's dataset
    mlp predict --model models:/mnist-mlp@champion digit.png
    mlp predict --model models:/pima-mlp/3 --json patients.csv

A registered model brings its own dataset configuration (the `config/params.yaml`
its run recorded), so its class names and input shape are the ones it was trained
with. Images are converted as the dataset's images are (greyscale or RGB, resized
to its input shape), feature rows are taken in the units of the dataset's raw
files: the model scales its raw inputs itself, as the served model does.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.commands.predict.inputs import read_inputs
from pipeline.commands.predict.model import load_predictor
from pipeline.model import class_ids, class_probabilities
from pipeline.paths import MODEL_FILE

HELP = """Images (PNG, JPEG, any format Pillow reads, any size and mode) are converted as
the dataset's own images: greyscale for a 28x28 dataset, RGB for 32x32x3, resized
to the input shape, transparent pixels as black. They must look like the training
images: MNIST digits are white on a black background, centred (--invert turns a
black-on-white drawing into that).

Feature rows, in an .npz file (array `inputs`, one row per example, such as
data/processed/test.npz) or a .csv file (one row per line; a header line is
skipped), are raw values in the units of the dataset's raw files (pixels 0 to
255, Pima's measurements). The model scales its inputs itself."""


@dataclass(frozen=True)
class Prediction:
    input: str
    class_index: int
    class_name: str
    probability: float
    probabilities: dict[str, float]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = HELP
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image, .npz or .csv files")
    parser.add_argument(
        "--model",
        default=str(MODEL_FILE),
        help="a .keras file or a registered model, models:/<name>@<alias> or models:/<name>/<version> "
        "(from the MLflow store at MLFLOW_TRACKING_URI, or mlflow.db) (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON list, with every class's probability")
    parser.add_argument("--invert", action="store_true", help="invert images (255 - pixel)")


def run(arguments: argparse.Namespace) -> None:
    predictions = predict(arguments.inputs, model=arguments.model, invert=arguments.invert)
    print(format_json(predictions) if arguments.json else format_table(predictions))


def predict(inputs: list[Path], *, model: str, invert: bool = False) -> list[Prediction]:
    """The predicted class of every example in `inputs`, with its probability."""
    predictor = load_predictor(model)
    dataset = predictor.dataset
    names, rows = [], []
    # Every input is read before anything is predicted: a bad one fails the whole call, with its name.
    for path in inputs:
        path_names, path_rows = read_inputs(path, dataset=dataset, invert=invert)
        names += path_names
        rows.append(path_rows)
    outputs = predictor.model.predict(np.concatenate(rows).astype(np.float32), verbose=0)
    return [
        _prediction(name, int(index), probabilities, dataset.class_names)
        for name, index, probabilities in zip(names, class_ids(outputs), class_probabilities(outputs), strict=True)
    ]


def _prediction(name: str, index: int, probabilities: np.ndarray, class_names: list[str]) -> Prediction:
    return Prediction(
        input=name,
        class_index=index,
        class_name=class_names[index],
        probability=float(probabilities[index]),
        probabilities={class_name: float(value) for class_name, value in zip(class_names, probabilities, strict=True)},
    )


def format_table(predictions: list[Prediction]) -> str:
    rows = [("input", "class", "probability")]
    rows += [(item.input, item.class_name, f"{item.probability:.4f}") for item in predictions]
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    return "\n".join(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>11}" for row in rows)


def format_json(predictions: list[Prediction]) -> str:
    return json.dumps([asdict(item) for item in predictions], indent=2)
