"""A study file (conf/study/<name>.yaml): published rows in the publication's own notation, each row a set
of Hydra overrides; and what a row measured. ConfigFile and check_overrides serve search files too."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Self

from pydantic import Field, ValidationError, field_validator

from pipeline.config import StrictModel, compose, parse_params, read_text, read_yaml
from pipeline.errors import ConfigError
from pipeline.paths import CONFIG_DIRECTORY

STUDY_DIRECTORY = CONFIG_DIRECTORY / "study"
# Training accuracy gained over the last epochs: near 0 once a row has converged.
LATE_EPOCHS = 5
OPTIMIZER_NAMES = {"SGD": "sgd", "Adam": "adam", "RMSprop": "rmsprop"}
REGULARIZER = re.compile(r"^(none|L2\((?P<l2>[0-9.e-]+)\)|Dropout\((?P<dropout>0?\.[0-9]+)\))$")
Percent = Annotated[float, Field(ge=0.0, le=100.0)]


class ConfigFile(StrictModel):
    """A file of conf/study/ or conf/search/, validated as a whole before anything runs."""

    directory: ClassVar[Path]

    @classmethod
    def path_of(cls, name_or_path: str) -> Path:
        """The file of a name in the model's directory, or the path given if it ends in .yaml or .yml."""
        path = Path(name_or_path)
        return path if path.suffix in (".yaml", ".yml") else cls.directory / f"{name_or_path}.yaml"

    @classmethod
    def load(cls, path: Path) -> Self:
        """The file validated; a ConfigError with a line per problem, or naming the directory's files."""
        kind = cls.directory.name
        try:
            return cls.model_validate(read_yaml(read_text(path), path))
        except FileNotFoundError:
            known = ", ".join(sorted(item.stem for item in cls.directory.glob("*.yaml"))) or "none"
            raise ConfigError(f"{kind} {path} not found; {kind} files in {cls.directory}/: {known}") from None
        except ValidationError as error:
            raise ConfigError("\n".join(f"{path}: {describe(problem)}" for problem in error.errors())) from None


class StudyRow(StrictModel):
    row: str = Field(pattern=r"^[A-Za-z0-9]+$")
    layers: str = Field(pattern=r"^[1-9][0-9]*(-[1-9][0-9]*)*$")  # units of the hidden Dense layers
    regularizer: str  # none, L2(<factor>) or Dropout(<rate>), on every hidden layer
    optimizer: Literal[tuple(OPTIMIZER_NAMES)]  # type: ignore[valid-type]
    relu: bool  # false: linear hidden layers
    published_train: Percent
    published_test: Percent
    note: str | None = None

    @field_validator("regularizer")
    @classmethod
    def known_regularizer(cls, value: str) -> str:
        if not REGULARIZER.match(value):
            raise ValueError(f"{value!r} is not none, L2(<factor>) or Dropout(<rate below 1>)")
        return value

    def overrides(self) -> list[str]:
        """The Hydra overrides (`dvc exp run -S`) that configure this row."""
        match = REGULARIZER.match(self.regularizer)
        return [
            f"optimizer={OPTIMIZER_NAMES[self.optimizer]}",
            f"model.hidden_units=[{self.layers.replace('-', ',')}]",
            f"model.activation={'relu' if self.relu else 'linear'}",
            f"model.dropout_rate={float(match['dropout'] or 0.0)}",
            f"model.l2_weight_decay={float(match['l2'] or 0.0)}",
        ]


class Study(ConfigFile):
    directory = STUDY_DIRECTORY
    title: str
    overrides: list[str]  # composed with every row, before the row's own
    rows: list[StudyRow] = Field(min_length=1)
    discussion: str | None = None  # written under the report's table: what explains the differences

    @field_validator("rows")
    @classmethod
    def unique_rows(cls, rows: list[StudyRow]) -> list[StudyRow]:
        if duplicates := sorted(name for name, count in Counter(row.row for row in rows).items() if count > 1):
            raise ValueError(f"row names must be unique; repeated: {', '.join(duplicates)}")
        return rows


@dataclass(frozen=True)
class Measured:
    """What a finished row measured: accuracies in percent, times in seconds since the epoch."""

    measured_train: float  # training accuracy of the last epoch
    late_gain: float | None  # training accuracy gained over the last LATE_EPOCHS epochs
    reached_at: int | None  # the first epoch whose training accuracy reached the published one
    measured_test: float
    seconds: float  # the MLflow run's duration: training and evaluation
    start: float
    end: float
    mlflow_run_id: str
    weights_sha256: str
    machine: str
    versions: str


def describe(problem: dict) -> str:
    """`parameters.model.dropout_rate: empty range ...`: the key, then pydantic's reason without its prefix."""
    # A discriminated union adds the variant (e.g. "float") to the location: it names no key.
    location = [str(part) for part in problem["loc"] if part not in ("float", "int", "categorical")]
    message = problem["msg"].removeprefix("Value error, ")
    return f"{'.'.join(location)}: {message}" if location else message


def check_overrides(overrides: list[str], path: Path) -> None:
    """Compose and validate `overrides` as the train stage would; the ConfigError names them."""
    try:
        parse_params(compose(overrides), path)
    except ConfigError as error:  # compose's (Hydra's) or parse_params' words
        raise ConfigError(f"{error}\n(overrides: {' '.join(overrides)})") from None


def experiment_name(study_name: str, row: StudyRow) -> str:
    """The DVC experiment (and MLflow run) name of a row, e.g. atienza-table-1-3-2-row-07."""
    return f"{study_name.replace('_', '-')}-row-{row.row.zfill(2)}"


def check_rows(study: Study) -> None:
    """Compose and validate every row before any row runs: a bad row fails the study at once."""
    for row in study.rows:
        check_overrides(study.overrides + row.overrides(), Path(f"row {row.row}"))
