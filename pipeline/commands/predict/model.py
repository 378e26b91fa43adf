"""The model `mlp predict` classifies with, and the dataset configuration it was trained with.

A local .keras file goes with the local params.yaml (DVC keeps the two in step).
A registered model brings its own dataset configuration: the config/params.yaml
its training run recorded. Either model scales its raw inputs itself.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import mlflow.tensorflow
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from pipeline.config import load_params
from pipeline.dataset_config import DatasetConfig
from pipeline.errors import ConfigError, DataError
from pipeline.paths import rerun_hint
from pipeline.tracking import tracking_uri

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[0-9]+)|@(?P<alias>[^/@]+))$")


@dataclass(frozen=True)
class Predictor:
    model: keras.Model
    dataset: DatasetConfig


def load_predictor(model: str) -> Predictor:
    """The model and the dataset configuration it was trained with."""
    if model.startswith("models:/"):
        keras_model, recorded = _registered_model(model)
        dataset = _recorded_dataset(model, recorded)
    else:
        keras_model = _keras_file(Path(model))
        dataset = load_params().dataset
    width = keras_model.input_shape[-1]
    if width != dataset.num_features:
        # Locally: params.yaml changed since the model was trained.
        hint = "" if model.startswith("models:/") else ": run `dvc repro` for the current params.yaml"
        raise ConfigError(
            f"{model} takes {width} features, but dataset {dataset.name} has {dataset.num_features} "
            f"(input_shape {dataset.input_shape}){hint}"
        )
    return Predictor(keras_model, dataset)


def _keras_file(path: Path) -> keras.Model:
    if not path.exists():
        raise DataError(f"{path} not found: {rerun_hint('train')}")
    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - any failure to rebuild the model means a damaged file
        raise DataError(f"{path} is not a readable Keras model ({type(error).__name__}: {error})") from None


def _registered_model(uri: str) -> tuple[keras.Model, dict]:
    """The model a models:/ URI names, and the params.yaml its training run recorded."""
    match = MODEL_URI.match(uri)
    if match is None:
        raise ConfigError(f"--model {uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    store = tracking_uri()
    if store.startswith("sqlite:///") and not Path(store.removeprefix("sqlite:///")).exists():
        # MLflow would create an empty store there and then report the model missing.
        raise ConfigError(f"--model {uri}: no MLflow store at {store}: train a model first, or set MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(store)
    client = MlflowClient(store)
    name, version, alias = match["name"], match["version"], match["alias"]
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
        with tempfile.TemporaryDirectory() as directory:
            recorded = mlflow.artifacts.download_artifacts(
                run_id=found.run_id, artifact_path="config/params.yaml", dst_path=directory
            )
            params = _read_yaml(Path(recorded))
            # The version just resolved, even if the alias moves meanwhile.
            model = mlflow.tensorflow.load_model(f"models:/{name}/{found.version}", dst_path=directory)
    except (MlflowException, OSError) as error:
        message = error.message if isinstance(error, MlflowException) else str(error)
        shown = re.sub(r"//[^/@]*@", "//", store)  # a server URI may hold a password
        raise ConfigError(f"--model {uri}: {message.splitlines()[0]} (MLflow store {shown})") from None
    return model, params


def _recorded_dataset(uri: str, params: dict) -> DatasetConfig:
    try:
        return DatasetConfig.model_validate(params.get("dataset"))
    except ValidationError as error:
        first = error.errors()[0]
        problem = ".".join(["dataset", *map(str, first["loc"])]) + f": {first['msg']}"
    raise ConfigError(f"--model {uri}: its run's config/params.yaml holds no valid dataset config ({problem})")


def _read_yaml(path: Path) -> dict:
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    return content if isinstance(content, dict) else {}
