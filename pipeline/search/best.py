"""The best trial, made a configuration of its own and scored once on the test split.

conf/experiment/<study>_best.yaml has the form of the other experiment files and is checked to compose to
exactly the trial's params. A DVC experiment <study>-best-<NNN> retrains the trial (to its weights: the train
stage is deterministic, the report compares both sha256) and evaluates it, once: it is not run again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from pipeline.config import compose, flatten
from pipeline.errors import PipelineError
from pipeline.files import write_text
from pipeline.paths import CONFIG_DIRECTORY, METRICS_FILE
from pipeline.search.schema import Search, trial_overrides
from pipeline.study.runner import committed_file, current_commit, finished_experiments, run_experiment
from pipeline.tracking import client

logger = logging.getLogger(__name__)

GROUPS = ("dataset", "model", "optimizer", "train")


class FlowListDumper(yaml.SafeDumper):
    """Lists on one line, as in the other experiment files: hidden_units: [512, 512]."""


FlowListDumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)
)


def write_best_experiment(search: Search, study_name: str, trial, metric: str) -> Path:
    """Write conf/experiment/<study>_best.yaml for `trial`; fail if it would not compose to the trial's params."""
    overrides = trial_overrides(search, trial.params)
    groups = [item for item in overrides if "=" in item and item.split("=", 1)[0] in GROUPS]
    trial_params = flatten(yaml.safe_load(compose(overrides)))
    group_params = flatten(yaml.safe_load(compose(groups)))
    changed = OmegaConf.create()
    for key, value in trial_params.items():
        if group_params.get(key) != value:
            OmegaConf.update(changed, key, value)  # nested: {"a.b": 1} -> {"a": {"b": 1}}
    name = f"{study_name}_best"
    header = (
        "# @package _global_\n"
        f"# The best trial of the search {study_name}: trial {trial.number}, {metric} {trial.value:.4f},\n"
        f"# written by `mlp search`. Run with: dvc exp run -S experiment={name}\n"
    )
    # The group choices as defaults (the list of single-key mappings Hydra expects, one per line).
    defaults = "".join(f"  - override /{item.split('=', 1)[0]}: {item.split('=', 1)[1]}\n" for item in groups)
    text = yaml.dump(OmegaConf.to_container(changed), Dumper=FlowListDumper, sort_keys=False)
    path = CONFIG_DIRECTORY / "experiment" / f"{name}.yaml"
    write_text(path, header + (f"defaults:\n{defaults}\n" if groups else "") + text)
    if flatten(yaml.safe_load(compose([f"experiment={name}"]))) != trial_params:
        raise PipelineError(f"{path} does not compose to trial {trial.number}'s params: {' '.join(overrides)}")
    return path


def evaluate_best(search: Search, study_name: str, trial, *, parent_run_id: str) -> dict | None:
    """The test metrics and weights of the best trial, from one DVC experiment that retrains and evaluates it."""
    name = f"{study_name.replace('_', '-')}-best-{trial.number:03d}"
    commit = current_commit()
    done = finished_experiments(commit).get(name)
    if done is None:
        logger.info("best trial %d: retraining and evaluating it on the test split once (%s)", trial.number, name)
        run_experiment(name, trial_overrides(search, trial.params))
        done = finished_experiments(commit).get(name)
    if done is None:
        logger.warning("the best trial's evaluation %s failed: the report has no test metrics", name)
        return None
    metrics = json.loads(committed_file(done, METRICS_FILE))
    # Beside the trials in the MLflow UI: a child of the study's run too, marked as the test evaluation.
    client().set_tag(metrics["mlflow_run_id"], "mlflow.parentRunId", parent_run_id)
    client().set_tag(metrics["mlflow_run_id"], "search.role", "best-trial-test")
    test = {key: metrics["test"][key] for key in ("accuracy", "loss")}
    return {"experiment": name, **test, "weights_sha256": metrics["weights_sha256"]}
