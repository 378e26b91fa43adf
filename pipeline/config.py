"""The parameters every stage reads: params.yaml, validated against one schema.

params.yaml is the Hydra composition of conf/ (written by `dvc exp run` or by
`mlp params`). Each stage validates the whole file before it
touches any data or creates any MLflow run, so a wrong value fails at once with
a message naming the key, the value and what is allowed.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

# The dataset section's schema has a module of its own.
from pipeline.dataset_config import DatasetConfig, PositiveInt, StrictModel
from pipeline.errors import ConfigError
from pipeline.paths import CONFIG_DIRECTORY, PARAMS_FILE

MIRROR_ENVIRONMENT_VARIABLE = "MLP_DATA_MIRROR"

ACTIVATIONS = ("relu", "tanh", "sigmoid", "softmax", "elu", "gelu", "linear")
KERNEL_INITIALIZERS = (
    "glorot_uniform",
    "glorot_normal",
    "he_uniform",
    "he_normal",
    "lecun_uniform",
    "lecun_normal",
    "uniform",
    "normal",
    "zeros",
)
OPTIMIZERS = ("adam", "sgd", "rmsprop")
LOSSES = ("categorical_crossentropy", "binary_crossentropy", "mse")

# NumPy's legacy seeding and scikit-learn's random_state take 32-bit seeds.
MAX_SEED = 2**32 - 1


class ModelConfig(StrictModel):
    hidden_units: list[PositiveInt]
    activation: Literal[ACTIVATIONS]  # type: ignore[valid-type]
    dropout_rate: float = Field(ge=0.0, lt=1.0)
    kernel_initializer: Literal[KERNEL_INITIALIZERS]  # type: ignore[valid-type]
    l2_weight_decay: float = Field(ge=0.0)


class OptimizerConfig(StrictModel):
    name: Literal[OPTIMIZERS]  # type: ignore[valid-type]
    learning_rate: float = Field(gt=0.0)
    # Only sgd and rmsprop have momentum; Keras' default is 0.
    momentum: float | None = Field(default=None, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def momentum_only_where_it_exists(self) -> OptimizerConfig:
        if self.name == "adam" and self.momentum is not None:
            raise ValueError("momentum applies to sgd and rmsprop only; remove it for adam")
        return self


class TrainConfig(StrictModel):
    # categorical_crossentropy for a softmax over classes, binary_crossentropy
    # for one sigmoid unit; mse works with either.
    loss: Literal[LOSSES]  # type: ignore[valid-type]
    batch_size: PositiveInt
    epochs: PositiveInt
    early_stopping_patience: PositiveInt | None
    # host: identical weights on the same machine; portable: on any x86-64 CPU
    # TensorFlow runs on, slower (pipeline.determinism). A default, so that
    # configs recorded before the key existed still load.
    determinism: Literal["host", "portable"] = "host"
    # constant, or cosine: decayed to 0 over all the epochs' steps. A default, like determinism.
    learning_rate_schedule: Literal["constant", "cosine"] = "constant"
    # Each training step compiled by XLA (host determinism only: XLA compiles for this
    # CPU). conf/ turns it on; absent, as in runs recorded before it existed, it is off.
    jit_compile: bool = False


class MlflowConfig(StrictModel):
    experiment_name: str = Field(min_length=1, max_length=500)
    registered_model_name: str = Field(min_length=1, max_length=256)

    @field_validator("experiment_name", "registered_model_name")
    @classmethod
    def not_blank(cls, value: str) -> str:
        if value != value.strip() or not value.strip():
            raise ValueError("must not be blank or start or end with spaces")
        return value

    @field_validator("registered_model_name")
    @classmethod
    def valid_model_name(cls, value: str) -> str:
        # MLflow's rule (mlflow.utils.validation._validate_model_name), checked before
        # training rather than at registration; restated so that the stages that never
        # log (validate, download, preprocess) need not import MLflow, which takes a second.
        if "/" in value or ":" in value:
            raise ValueError(f"invalid model name {value!r}: names cannot contain '/' or ':'")
        normalized = posixpath.normpath(value)
        if normalized != value or normalized == "." or normalized.startswith(("..", "/")):
            raise ValueError(f"invalid model name {value!r}: as a path it would resolve to {normalized!r}")
        return value


class Params(StrictModel):
    seed: int = Field(ge=0, le=MAX_SEED)
    mirror: str | None
    mlflow: MlflowConfig
    dataset: DatasetConfig
    model: ModelConfig
    optimizer: OptimizerConfig
    train: TrainConfig

    @model_validator(mode="after")
    def training_fits_data(self) -> Params:
        if self.train.early_stopping_patience and self.dataset.validation_fraction == 0:
            raise ValueError(
                "train.early_stopping_patience needs a validation set: "
                "set dataset.validation_fraction > 0 or early_stopping_patience to null"
            )
        # The output layer follows the task (pipeline.model): a loss made for
        # the other kind of output would train, but on the wrong targets.
        wrong_loss = {"binary": "categorical_crossentropy", "multiclass": "binary_crossentropy"}[self.dataset.task]
        if self.train.loss == wrong_loss:
            right = "binary_crossentropy" if self.dataset.task == "binary" else "categorical_crossentropy"
            raise ValueError(
                f"train.loss {wrong_loss} does not fit dataset.task {self.dataset.task} "
                f"({self.dataset.name}): use {right} or mse"
            )
        return self


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; raise ConfigError naming every bad key."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: compose it from conf/ with `mlp params`") from None
    return parse_params(text, path)


def parse_params(text: str, path: Path = PARAMS_FILE) -> Params:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of parameters, found {type(raw).__name__}")
    missing = sorted(_unset_keys(raw))
    if missing:
        raise ConfigError(
            f"{path}: no value given (???) for {', '.join(missing)}; set it in conf/ or with -S key=value"
        )
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        problems = [_describe(problem) for problem in error.errors()]
        if len(problems) == 1:
            raise ConfigError(f"{path}: {problems[0]}") from None
        listed = "\n".join(f"  {problem}" for problem in problems)
        raise ConfigError(f"{path} has {len(problems)} invalid parameters:\n{listed}") from None


def mirror_location(configured: str | None) -> str | None:
    """The mirror to download from: the environment variable wins over params.yaml's `mirror`."""
    return os.environ.get(MIRROR_ENVIRONMENT_VARIABLE) or configured


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: the form MLflow params and `dvc params diff` use."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def compose(overrides: list[str] | None = None, config_directory: Path = CONFIG_DIRECTORY) -> str:
    """The YAML text `dvc exp run` would write to params.yaml for these overrides."""
    # The same function DVC calls, so the two can never disagree on the format.
    # Imported here: DVC and Hydra take a second to import, and of the stages
    # only train composes (for its lineage record).
    from dvc.utils.hydra import compose_and_dump
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    with tempfile.TemporaryDirectory() as directory:
        output = Path(directory) / "params.yaml"
        try:
            compose_and_dump(output, str(config_directory.resolve()), None, "config", "", overrides or [])
        except (HydraException, OmegaConfBaseException) as error:
            raise ConfigError(f"{' '.join(overrides or [])}: {_hydra_message(error)}") from None
        return output.read_text(encoding="utf-8")


def _hydra_message(error: Exception) -> str:
    """Hydra's own words without its config search path: e.g. the missing option and the available ones."""
    text = str(error).split("\nConfig search path:")[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _unset_keys(mapping: dict[str, Any], prefix: str = "") -> list[str]:
    return [key for key, value in flatten(mapping, prefix).items() if value == "???"]


def _describe(problem: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
    if problem["type"] == "missing":
        return f"{key}: missing; set it in conf/ or with -S {key}=<value>"
    if problem["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(problem["loc"][:-1]))
        return f"{key} = {_short(problem['input'])}: unknown key; allowed here: {allowed}"
    message = problem["msg"].removeprefix("Value error, ")
    if isinstance(problem["input"], dict):
        # A rule across several keys: its message names them; the section's values would bury it.
        return message
    return f"{key} = {_short(problem['input'])}: {message}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _allowed_keys(location: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Params
    for part in location:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return list(model.model_fields)
