"""A search's report in reports/search/<study>/ (docs/search.md): README.md, best.json, trials.csv and Optuna's
plots; the best trial written as conf/experiment/<study>_best.yaml, retrained and evaluated on the test split once.
"""

from __future__ import annotations

import json
import logging
import statistics
import warnings
from datetime import date
from pathlib import Path

import optuna
import yaml
from omegaconf import OmegaConf
from optuna.importance import FanovaImportanceEvaluator
from optuna.trial import TrialState
from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

from pipeline import hardware
from pipeline.config import compose, flatten, read_yaml
from pipeline.errors import PipelineError
from pipeline.figures import save_figure
from pipeline.files import write_json, write_text
from pipeline.paths import CONFIG_DIRECTORY, METRICS_FILE, REPORTS_DIRECTORY
from pipeline.search.schema import Search, trial_name, trial_overrides
from pipeline.search.storage import RUN_ATTRIBUTE
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
    trial_params = flatten(read_yaml(compose(overrides), "conf/"))
    group_params = flatten(read_yaml(compose(groups), "conf/"))
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
    defaults = "".join(f"  - override /{item.replace('=', ': ', 1)}\n" for item in groups)
    text = yaml.dump(OmegaConf.to_container(changed), Dumper=FlowListDumper, sort_keys=False)
    path = CONFIG_DIRECTORY / "experiment" / f"{name}.yaml"
    write_text(path, header + (f"defaults:\n{defaults}\n" if groups else "") + text)
    if flatten(read_yaml(compose([f"experiment={name}"]), "conf/")) != trial_params:
        raise PipelineError(f"{path} does not compose to trial {trial.number}'s params: {' '.join(overrides)}")
    return path


def evaluate_best(search: Search, study_name: str, trial, *, parent_run_id: str) -> dict | None:
    """The test metrics and weights of the best trial, from one DVC experiment that retrains and evaluates it."""
    name = trial_name(study_name, trial.number, "best")
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


def write_report(study: optuna.Study, search: Search, path: Path, *, parent_run_id: str) -> Path:
    directory = REPORTS_DIRECTORY / "search" / study.study_name
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    write_text(directory / "trials.csv", frame.to_csv(index=False))
    facts = counts(study)
    if facts["trials"]["complete"]:
        facts |= best_facts(study, search, parent_run_id=parent_run_id)
        with warnings.catch_warnings():  # Optuna's matplotlib plots are "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = plot_optimization_history(study, target_name=search.objective.metric)
            save_figure(axes.figure, directory / "optimization_history.png")
            facts["param_importances"] = importances(study, directory, metric=search.objective.metric)
    write_json(directory / "best.json", facts)
    write_text(directory / "README.md", readme(study.study_name, path, facts, plots=sorted(directory.glob("*.png"))))
    return directory


def counts(study: optuna.Study) -> dict:
    trials = study.get_trials(deepcopy=False)
    timed = [
        trial.user_attrs for trial in trials if trial.state == TrialState.COMPLETE and "fit_seconds" in trial.user_attrs
    ]
    ended = [trial for trial in trials if trial.datetime_start and trial.datetime_complete]
    # From the first trial's start to the last one's end, over every worker and machine.
    wall_minutes = None
    if ended:
        wall = max(trial.datetime_complete for trial in ended) - min(trial.datetime_start for trial in ended)
        wall_minutes = round(wall.total_seconds() / 60, 1)
    return {
        "study": study.study_name,
        "trials": {state.name.lower(): sum(trial.state == state for trial in trials) for state in TrialState},
        "trials_wall_minutes": wall_minutes,
        # Everything a trial costs beyond fitting: DVC, Python and TensorFlow start, MLflow logging.
        "overhead_seconds_per_trial": median([times["wall_seconds"] - times["fit_seconds"] for times in timed]),
        "median_trial_seconds": median([times["wall_seconds"] for times in timed]),
    }


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def best_facts(study: optuna.Study, search: Search, *, parent_run_id: str) -> dict:
    best, metric = study.best_trial, search.objective.metric
    client().log_metric(parent_run_id, f"best_{metric}", best.value)
    experiment = write_best_experiment(search, study.study_name, best, metric)
    test = evaluate_best(search, study.study_name, best, parent_run_id=parent_run_id)
    run_id = best.user_attrs.get(RUN_ATTRIBUTE)
    trial_sha = client().get_run(run_id).data.tags.get("model.weights_sha256") if run_id else None
    return {
        "best_trial": {
            "number": best.number,
            "experiment": trial_name(study.study_name, best.number),
            "mlflow_run_id": run_id,
            "params": best.params,
            metric: best.value,
            "weights_sha256": trial_sha,
        },
        "best_experiment_file": str(experiment),
        "test": None if test is None else test | {"same_weights_as_the_trial": test["weights_sha256"] == trial_sha},
    }


def importances(study: optuna.Study, directory: Path, *, metric: str) -> dict[str, float]:
    """Each parameter's share of the objective's variance over the completed trials (fANOVA, plotted too)."""
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return {}
    evaluator = FanovaImportanceEvaluator(seed=0)  # its random forest seeded: the same trials, the same importances
    try:
        found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError) as error:  # e.g. every completed trial had the same params
        logger.warning("no parameter importances: %s", error)
        return {}
    axes = plot_param_importances(study, evaluator=evaluator, target_name=metric)
    save_figure(axes.figure, directory / "param_importances.png")
    return {name: round(value, 3) for name, value in found.items()}


def readme(study_name: str, path: Path, facts: dict, *, plots: list[Path]) -> str:
    trials = facts["trials"]
    lines = [
        f"# Search {study_name}",
        "",
        # The machine writing the report: trials from other machines ran elsewhere.
        f"Written by `mlp search` from `{path.as_posix()}` on {date.today().isoformat()}, "
        f"on {hardware.cpu()['model_name']}, {hardware.schedulable_cores()} cores.",
        "",
        f"Trials: {trials['complete']} complete, {trials['pruned']} pruned, {trials['fail']} failed, "
        f"{trials['running']} running, in {facts['trials_wall_minutes']} minutes from the first start to the last end.",
        f"Median trial: {facts['median_trial_seconds']} s, of which "
        f"{facts['overhead_seconds_per_trial']} s beyond fitting (DVC, process start, MLflow).",
    ]
    if best := facts.get("best_trial"):
        metric = next(key for key in best if key.startswith("val_"))
        lines += ["", f"## Best trial: {best['number']} (`{best['experiment']}`)", "", "| parameter | value |"]
        lines += ["|---|---|"] + [f"| `{name}` | {value} |" for name, value in best["params"].items()]
        lines += ["", f"- {metric}: {best[metric]:.4f}", f"- MLflow run: `{best['mlflow_run_id']}`"]
        if test := facts.get("test"):
            same = "the same as" if test["same_weights_as_the_trial"] else "NOT the same as"
            lines += [
                f"- test accuracy (evaluated once, on this trial only, by `{test['experiment']}`): "
                f"{100 * test['accuracy']:.2f}%",
                f"- retrained weights sha256 `{test['weights_sha256'][:12]}`: {same} the trial's",
            ]
        lines.append(f"- retrain it: `dvc exp run -S experiment={Path(facts['best_experiment_file']).stem}`")
    if facts.get("param_importances"):
        lines += ["", "## What mattered (fANOVA importance)", "", "| parameter | importance |", "|---|---|"]
        lines += [f"| `{name}` | {value:.3f} |" for name, value in facts["param_importances"].items()]
    for plot in plots:
        lines += ["", f"![{plot.stem.replace('_', ' ')}]({plot.name})"]
    return "\n".join(lines) + "\n"
