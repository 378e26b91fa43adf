"""A search file, conf/search/<name>.yaml (its keys: docs/search.md), checked before any trial: the schema here,
then every range end and every choice composed and validated as the train stage would; and a trial's overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config import StrictModel
from pipeline.paths import CONFIG_DIRECTORY
from pipeline.study.schema import ConfigFile, check_overrides

SEARCH_DIRECTORY = CONFIG_DIRECTORY / "search"
LAYERS, UNITS = "model.num_layers", "model.units_per_layer"
# What can be searched: a config key, a config group (optimizer), or the two keys that make model.hidden_units.
SEARCHABLE = (
    "optimizer optimizer.learning_rate optimizer.momentum model.dropout_rate model.l2_weight_decay model.activation "
    f"model.kernel_initializer {LAYERS} {UNITS} train.batch_size train.epochs train.learning_rate_schedule"
).split()
METRIC_DIRECTIONS = {"val_accuracy": "maximize", "val_loss": "minimize"}


class RangeParameter(StrictModel):
    @model_validator(mode="after")
    def not_empty(self):
        if self.low > self.high:
            raise ValueError(f"empty range: low {self.low} > high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, not {self.low}")
        return self


class FloatParameter(RangeParameter):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False


class IntParameter(RangeParameter):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(default=1, ge=1)
    log: bool = False


class CategoricalParameter(StrictModel):
    type: Literal["categorical"]
    choices: list[str | int | float] = Field(min_length=1)


Parameter = Annotated[FloatParameter | IntParameter | CategoricalParameter, Field(discriminator="type")]


class Objective(StrictModel):
    metric: str
    direction: Literal["maximize", "minimize"] | None = None  # None: the metric's own

    @field_validator("metric")
    @classmethod
    def validation_metric(cls, metric: str) -> str:
        allowed = ", ".join(METRIC_DIRECTIONS)
        if "test" in metric:
            raise ValueError(f"{metric}: a search never looks at the test split; allowed: {allowed}")
        if metric not in METRIC_DIRECTIONS:
            raise ValueError(f"unknown metric {metric}; allowed: {allowed}")
        return metric

    @model_validator(mode="after")
    def direction_of_the_metric(self) -> Objective:
        goal = METRIC_DIRECTIONS[self.metric]
        if self.direction not in (None, goal):
            raise ValueError(f"{self.metric} is to {goal}, not to {self.direction}")
        return self


class Sampler(StrictModel):
    name: Literal["tpe", "random"] = "tpe"
    seed: int = Field(default=42, ge=0)
    # TPE: trials drawn at random before TPE models the results.
    n_startup_trials: int = Field(default=10, ge=0)


class Pruner(StrictModel):
    name: Literal["median", "successive_halving", "hyperband", "none"] = "median"
    # median: trials that are never pruned, and epochs never judged in any trial.
    n_startup_trials: int = Field(default=5, ge=0)
    n_warmup_steps: int = Field(default=5, ge=0)
    # successive_halving, hyperband: epochs a trial always gets; the factor between rungs.
    min_resource: int = Field(default=1, ge=1)
    reduction_factor: int = Field(default=3, ge=2)

    def spec(self, max_epochs: int) -> dict:
        """The settings pipeline.search.storage.make_pruner builds it from."""
        settings = {"median": {"n_startup_trials", "n_warmup_steps"}, "none": set()}
        spec = self.model_dump(include={"name", *settings.get(self.name, {"min_resource", "reduction_factor"})})
        # Hyperband's max_resource explicit: "auto" is inferred per process, and the trials' processes must agree.
        return spec | {"max_resource": max_epochs} if self.name == "hyperband" else spec


class Budget(StrictModel):
    # Trials that count: completed and pruned, over all workers and machines.
    n_trials: int | None = Field(default=None, ge=1)
    # Wall time of one `mlp search` command: no trial starts after it.
    timeout_minutes: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def bounded(self) -> Budget:
        if self.n_trials is None and self.timeout_minutes is None:
            raise ValueError("set n_trials, timeout_minutes or both")
        return self


class Search(ConfigFile):
    directory = SEARCH_DIRECTORY
    description: str | None = None
    experiment: str | None = None
    overrides: list[str] = []
    parameters: dict[str, Parameter] = Field(min_length=1)
    objective: Objective
    sampler: Sampler = Sampler()
    pruner: Pruner = Pruner()
    budget: Budget

    @field_validator("parameters")
    @classmethod
    def searchable(cls, parameters: dict[str, Parameter]) -> dict[str, Parameter]:
        for name in parameters:
            if name not in SEARCHABLE:
                raise ValueError(f"unknown parameter {name}; allowed: {', '.join(SEARCHABLE)}")
        if (LAYERS in parameters) != (UNITS in parameters):
            raise ValueError(f"{LAYERS} and {UNITS} go together: hidden_units = [units] * layers")
        return parameters

    def base_overrides(self) -> list[str]:
        return ([f"experiment={self.experiment}"] if self.experiment else []) + self.overrides


def trial_overrides(search: Search, values: dict[str, object]) -> list[str]:
    """The Hydra overrides (`dvc exp run -S`) of a trial with these parameter values."""
    overrides = search.base_overrides()
    # The group choice first: an optimizer=... after optimizer.learning_rate=... would reset it.
    for name in sorted(values, key=lambda name: name != "optimizer"):
        if name not in (LAYERS, UNITS):
            overrides.append(f"{name}={values[name]}")
    if LAYERS in values:
        overrides.append(f"model.hidden_units=[{','.join([str(values[UNITS])] * int(values[LAYERS]))}]")
    return overrides


def corners(search: Search) -> list[dict[str, object]]:
    """Parameter values that reach every range end and every choice: if these validate, all values do."""
    low, high, choices = {}, {}, []
    for name, parameter in search.parameters.items():
        if isinstance(parameter, CategoricalParameter):
            low[name] = high[name] = parameter.choices[0]
            choices += [(name, choice) for choice in parameter.choices[1:]]
        else:
            low[name], high[name] = parameter.low, parameter.high
    return [low, high] + [low | {name: choice} for name, choice in choices]


def check_values(search: Search, path: Path) -> None:
    """Compose and validate the corners before any trial: a value no stage accepts fails the search at once."""
    for values in corners(search):
        check_overrides(trial_overrides(search, values), path)


def max_epochs(search: Search, base_epochs: int) -> int:
    """The most epochs a trial may train: Hyperband's maximum resource."""
    return max(int(values.get("train.epochs", base_epochs)) for values in corners(search))


def trial_name(study_name: str, number: int, kind: str = "trial") -> str:
    """The DVC experiment (and MLflow run) name of a trial, e.g. mnist-trial-007, or of its retraining (kind "best")."""
    return f"{study_name.replace('_', '-')}-{kind}-{number:03d}"
