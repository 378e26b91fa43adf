"""The parameters every stage reads: params.yaml, the Hydra composition of conf/, validated against one schema
before a stage touches any data or MLflow run; a wrong value fails with the key, the value and what is allowed.
"""

from __future__ import annotations

import math
import posixpath
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import psutil
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from pipeline.errors import ConfigError, DataError
from pipeline.files import file_digest
from pipeline.paths import CONFIG_DIRECTORY, PARAMS_FILE, rerun_hint

KERNEL_INITIALIZERS = (  # Keras' names: the variance-scaling families, then plain distributions
    *("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform", "lecun_normal"),
    *("uniform", "normal", "zeros"),
)
# The files each dataset format reads, by role.
FORMAT_FILES = {
    "idx": ("train_images", "train_labels", "test_images", "test_labels"),
    "cifar_python": ("archive",),
    "csv": ("table",),
}

# NumPy's legacy seeding and scikit-learn's random_state take 32-bit seeds.
MAX_SEED = 2**32 - 1

# float32 weights: the weight, its gradient and the optimizer's at most two slots (Adam's moments).
BYTES_PER_PARAMETER = 4 * 4
# float32 activations, kept for the backward pass, and their gradients.
BYTES_PER_ACTIVATION = 4 * 2

PositiveInt = Annotated[int, Field(ge=1)]
FileName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")]


def _printable(value: str) -> str:
    # Names reach MLflow's UI, terminals and logs, where a line break or an escape sequence would forge output.
    if not value.isprintable():
        raise ValueError("must be printable: no line break, tab, bell or escape sequence")
    return value


PrintableName = Annotated[str, AfterValidator(_printable)]


class StrictModel(BaseModel):
    # Unknown keys are errors: a misspelled key must not be silently ignored.
    # inf and nan are refused in every float: they would train a NaN model.
    # strict: a boolean is not a number (YAML's `true` is not 1), nor 128.0 a batch size.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class FileSpec(StrictModel):
    """A raw file of a dataset, pinned by size and checksum."""

    name: FileName  # in data/raw/<dataset>/ and in a mirror's <dataset>/ folder
    remote_name: FileName | None = None  # the name at the public URLs, where it differs
    size: PositiveInt  # bytes
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    md5: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None

    @model_validator(mode="after")
    def has_a_checksum(self) -> FileSpec:
        if self.sha256 is None and self.md5 is None:
            raise ValueError(f"file {self.name} needs a sha256 (or, failing that, an md5) to be verified")
        return self

    def mismatch(self, path: Path) -> str | None:
        """Why `path` is not this file (size, then sha256 or else md5), or None if it is."""
        size = path.stat().st_size
        if size != self.size:
            return f"size {size:,} bytes, expected {self.size:,}"
        algorithm, expected = ("sha256", self.sha256) if self.sha256 else ("md5", self.md5)
        actual = file_digest(path, algorithm)
        return None if actual == expected else f"{algorithm} {actual}, expected {expected}"

    def verify(self, path: Path) -> None:
        if not path.exists():
            raise DataError(f"{path} not found: {rerun_hint('download')}")
        if problem := self.mismatch(path):
            raise DataError(f"{path}: {problem}; delete it and download again")


class CsvLayout(StrictModel):
    delimiter: str = Field(min_length=1, max_length=1)
    header_rows: int = Field(ge=0)  # lines to skip before the data
    feature_columns: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)  # 0-based
    label_column: int = Field(ge=0)


class DatasetConfig(StrictModel):
    """conf/dataset/<name>.yaml: files, format, shape, classes."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    format: Literal[tuple(FORMAT_FILES)]  # type: ignore[valid-type]
    task: Literal["multiclass", "binary"]
    urls: list[Annotated[str, Field(pattern=r"^(https?|file)://")]] = Field(min_length=1)
    files: dict[str, FileSpec]
    input_shape: list[PositiveInt] = Field(min_length=1, max_length=3)
    num_classes: int = Field(ge=2)
    class_names: list[PrintableName]
    # unit_interval: pixels / 255; standardize: zero mean, unit variance, fitted on the training split.
    scaling: Literal["unit_interval", "standardize"]
    validation_fraction: float = Field(ge=0.0, lt=1.0)
    test_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)
    csv: CsvLayout | None = None
    max_train_samples: PositiveInt | None
    max_test_samples: PositiveInt | None

    @property
    def num_features(self) -> int:
        return math.prod(self.input_shape)

    @model_validator(mode="after")
    def consistent(self) -> DatasetConfig:
        expected = set(FORMAT_FILES[self.format])
        if set(self.files) != expected:
            raise ValueError(
                f"dataset.files of format {self.format} must name {sorted(expected)}, found {sorted(self.files)}"
            )
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"dataset.class_names has {len(self.class_names)} names for {self.num_classes} classes")
        if repeated := next((name for name in self.class_names if self.class_names.count(name) > 1), None):
            raise ValueError(f"dataset.class_names must be unique: {repeated!r} is repeated")
        if self.task == "binary" and self.num_classes != 2:
            raise ValueError(f"dataset.task binary needs num_classes 2, found {self.num_classes}")
        is_csv = self.format == "csv"
        if is_csv != (self.csv is not None) or is_csv != (self.test_fraction is not None):
            raise ValueError("dataset.csv and dataset.test_fraction are required for format csv, and only for it")
        if self.csv is not None and len(self.csv.feature_columns) != self.num_features:
            raise ValueError(
                f"dataset.csv.feature_columns lists {len(self.csv.feature_columns)} columns "
                f"but dataset.input_shape {self.input_shape} has {self.num_features} features"
            )
        # A stratified split needs at least one example of every class on each side.
        smallest = 2 * self.num_classes
        for key in ("max_train_samples", "max_test_samples"):
            value = getattr(self, key)
            if value is not None and value < smallest:
                raise ValueError(f"dataset.{key} = {value} is too small to stratify: use at least {smallest} or null")
        if self.max_train_samples and 0 < self.validation_fraction * self.max_train_samples < self.num_classes:
            raise ValueError(
                f"dataset.validation_fraction = {self.validation_fraction} of {self.max_train_samples} samples "
                f"leaves fewer validation examples than the {self.num_classes} classes"
            )
        return self


class ModelConfig(StrictModel):
    hidden_units: list[PositiveInt]
    activation: Literal["relu", "tanh", "sigmoid", "softmax", "elu", "gelu", "linear"]
    dropout_rate: float = Field(ge=0.0, lt=1.0)
    kernel_initializer: Literal[KERNEL_INITIALIZERS]  # type: ignore[valid-type]
    l2_weight_decay: float = Field(ge=0.0)


class OptimizerConfig(StrictModel):
    name: Literal["adam", "sgd", "rmsprop"]
    learning_rate: float = Field(gt=0.0)
    momentum: float | None = Field(default=None, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def momentum_only_where_it_exists(self) -> OptimizerConfig:
        if self.name == "adam" and self.momentum is not None:
            raise ValueError("momentum applies to sgd and rmsprop only; remove it for adam")
        return self


class TrainConfig(StrictModel):
    loss: Literal["categorical_crossentropy", "binary_crossentropy", "mse"]
    batch_size: PositiveInt
    epochs: PositiveInt
    early_stopping_patience: PositiveInt | None
    # Defaults below, so that configs recorded before a key existed still load (docs/configuration.md).
    determinism: Literal["host", "portable"] = "host"
    learning_rate_schedule: Literal["constant", "cosine"] = "constant"  # cosine: to 0 over all steps
    jit_compile: bool = False  # XLA-compiled steps (host determinism only: XLA compiles for this CPU)


class MlflowConfig(StrictModel):
    experiment_name: PrintableName = Field(min_length=1, max_length=500)
    registered_model_name: PrintableName = Field(min_length=1, max_length=256)

    @field_validator("experiment_name", "registered_model_name")
    @classmethod
    def not_blank(cls, value: str) -> str:
        if value != value.strip() or not value.strip():
            raise ValueError("must not be blank or start or end with spaces")
        return value

    @field_validator("registered_model_name")
    @classmethod
    def valid_model_name(cls, value: str) -> str:
        # MLflow's rule, checked before training rather than at registration; restated so
        # that the stages that never log need not import MLflow, which takes a second.
        if "/" in value or ":" in value:
            raise ValueError(f"invalid model name {value!r}: names cannot contain '/' or ':'")
        if "@" in value:  # MLflow stores it, but models:/<name>@<alias> could not address it
            raise ValueError(f"invalid model name {value!r}: names cannot contain '@' (models:/<name>@<alias>)")
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
        right = "binary_crossentropy" if self.dataset.task == "binary" else "categorical_crossentropy"
        if self.train.loss not in (right, "mse"):
            raise ValueError(
                f"train.loss {self.train.loss} does not fit dataset.task {self.dataset.task} "
                f"({self.dataset.name}): use {right} or mse"
            )
        # A batch larger than the training rows, or a network that cannot fit in this machine's memory.
        dataset, batch_size, hidden_units = self.dataset, self.train.batch_size, self.model.hidden_units
        if dataset.max_train_samples:  # an upper bound: train_test_split holds out ceil(fraction * rows)
            rows = dataset.max_train_samples - math.ceil(dataset.validation_fraction * dataset.max_train_samples)
            if batch_size > rows:
                raise ValueError(f"train.batch_size {batch_size} is larger than the at most {rows} training rows")
        sizes = [dataset.num_features, *hidden_units, 1 if dataset.task == "binary" else dataset.num_classes]
        parameters = sum((inputs + 1) * outputs for inputs, outputs in zip(sizes[:-1], sizes[1:], strict=True))
        needed = parameters * BYTES_PER_PARAMETER + batch_size * sum(sizes) * BYTES_PER_ACTIVATION
        available = psutil.virtual_memory().total
        if needed > available:
            raise ValueError(
                f"train.batch_size {batch_size} and model.hidden_units {hidden_units} need about "
                f"{needed / 2**30:,.1f} GiB ({parameters:,} parameters); this machine has {available / 2**30:,.1f} GiB"
            )
        return self


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; raise ConfigError naming every bad key."""
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: compose it from conf/ with `mlp params`") from None
    return parse_params(text, path)


def read_text(path: Path) -> str:
    """A UTF-8 file's text; ConfigError naming the file (and the line of a bad byte) if it cannot be read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as error:  # a directory, a symlink loop, no permission
        raise ConfigError(f"{path}: cannot be read: {error.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 (byte {data[error.start]:#04x})") from None


def read_yaml(text: str, path: Path | str) -> Any:
    """YAML as DVC reads params.yaml (ruamel's safe loader: YAML 1.2, duplicate keys refused), so that
    `seed: 017` is 17 to the stages as to DVC; ConfigError naming the file and line of a problem."""
    try:
        return YAML(typ="safe").load(text)
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: {error.problem or error.context}") from None


def parse_params(text: str, path: Path = PARAMS_FILE) -> Params:
    raw = read_yaml(text, path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of parameters, found {type(raw).__name__}")
    if missing := sorted(key for key, value in flatten(raw).items() if value == "???"):
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


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: the form MLflow params and `dvc params diff` use."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed(before: dict, after: dict) -> dict:
    """{key: {"a": value, "b": value}} for each key whose value differs (None where a side lacks it)."""
    keys = sorted(set(before) | set(after))
    return {key: {"a": before.get(key), "b": after.get(key)} for key in keys if before.get(key) != after.get(key)}


def compose(overrides: list[str] | None = None, config_directory: Path = CONFIG_DIRECTORY) -> str:
    """The YAML text `dvc exp run` would write to params.yaml for these overrides."""
    # The function DVC calls, so the two never disagree on the format. Imported here:
    # DVC and Hydra take a second to import, and of the stages only train composes.
    from dvc.utils.hydra import compose_and_dump
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for path in sorted(config_directory.rglob("*.yaml")):
        # Hydra reads YAML 1.1 (017 is octal 15, yes is true), DVC then params.yaml as YAML 1.2:
        # a value the two read differently is refused rather than changed on its way to the stages.
        text = read_text(path)
        dvc_reading = read_yaml(text, path) or {}
        try:
            hydra_reading = OmegaConf.to_container(OmegaConf.create(text)) or {}
        except OmegaConfBaseException as error:
            raise ConfigError(f"{path}: {str(error).splitlines()[0]}") from None
        if not isinstance(dvc_reading, dict):
            raise ConfigError(f"{path} must hold a mapping, found {type(dvc_reading).__name__}")
        hydra_values = flatten(hydra_reading)
        for key, value in flatten(dvc_reading).items():
            if hydra_values.get(key) != value:
                raise ConfigError(
                    f"{path}: {key} reads as {hydra_values.get(key)!r} to Hydra "
                    f"but {value!r} to DVC: write it so that both agree"
                )
    with tempfile.TemporaryDirectory() as directory:
        output = Path(directory) / "params.yaml"
        try:
            compose_and_dump(output, str(config_directory.resolve()), None, "config", "", overrides or [])
        except (HydraException, OmegaConfBaseException) as error:
            # Hydra's own words (the missing option and the available ones) on one line, without its search path.
            text = str(error).split("\nConfig search path:")[0]
            message = " ".join(line.strip() for line in text.splitlines() if line.strip())
            raise ConfigError(f"{' '.join(overrides or [])}: {message}") from None
        return output.read_text(encoding="utf-8")


def _describe(problem: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
    if problem["type"] == "missing":
        return f"{key}: missing; set it in conf/ or with -S {key}=<value>"
    if problem["type"] == "extra_forbidden":
        model: type[BaseModel] = Params  # the innermost model holding the unknown key
        for part in problem["loc"][:-1]:
            annotation = model.model_fields[part].annotation
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                break
            model = annotation
        return f"{key} = {_short(problem['input'])}: unknown key; allowed here: {', '.join(model.model_fields)}"
    message = problem["msg"].removeprefix("Value error, ")
    if isinstance(problem["input"], dict):
        # A rule across several keys: its message names them; the section's values would bury it.
        return message
    return f"{key} = {_short(problem['input'])}: {message}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
