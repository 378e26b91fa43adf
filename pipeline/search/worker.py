"""One search worker: run the study's trials until the budget is spent.

    python -m pipeline.search.worker SEARCH_FILE STUDY DEADLINE

The storage's location comes in MLP_SEARCH_STORAGE (a PostgreSQL URL holds a password; arguments show in
`ps`). Optuna's optimize() asks for each trial, keeps its heartbeat and tells how it ended.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.errors import PipelineError
from pipeline.git import git
from pipeline.run_owner import owner_of, owner_tags
from pipeline.search import storage as search_storage
from pipeline.search.schema import CategoricalParameter, FloatParameter, Search, trial_overrides
from pipeline.search.study import PARENT_RUN_ATTRIBUTE, log_directory, record_owner, tag_run, trial_name
from pipeline.stage import run_stage
from pipeline.study.runner import run_experiment

# Trials failing one after another: a broken setup, not bad luck with parameters.
MAX_FAILURES_IN_A_ROW = 3
FITTED = re.compile(r"fitted in ([0-9.]+) s")


class TrialFailed(PipelineError):
    """The trial's DVC experiment failed: the study records it FAIL and the worker goes on."""


def make_sampler(search: Search, trial_number: int) -> optuna.samplers.BaseSampler:
    """The trial's own sampler, seeded by (search seed, trial number) mixed: neighbouring trials' streams unrelated."""
    seed = int.from_bytes(hashlib.sha256(f"{search.sampler.seed}:{trial_number}".encode()).digest()[:4], "big")
    if search.sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.sampler.n_startup_trials)


def suggest(trial: optuna.Trial, search: Search) -> None:
    for name, parameter in search.parameters.items():
        if isinstance(parameter, CategoricalParameter):
            trial.suggest_categorical(name, parameter.choices)
        elif isinstance(parameter, FloatParameter):
            trial.suggest_float(name, parameter.low, parameter.high, log=parameter.log)
        else:
            trial.suggest_int(name, parameter.low, parameter.high, step=parameter.step, log=parameter.log)


def budget_left(study: optuna.Study, search: Search, deadline: float) -> bool:
    """Whether another trial may start: before the deadline, and fewer than n_trials counted or running."""
    counted = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    return time.time() < deadline and (search.budget.n_trials is None or len(counted) < search.budget.n_trials)


def trial_environment(trial: optuna.Trial) -> dict[str, str]:
    """What makes the train stage a trial of this study, and lets it find this worker gone."""
    return os.environ | {
        search_storage.TRIAL_VARIABLE: str(trial.number),
        search_storage.STUDY_VARIABLE: trial.study.study_name,
        search_storage.PARENT_RUN_VARIABLE: trial.study.user_attrs[PARENT_RUN_ATTRIBUTE],
        search_storage.WORKER_VARIABLE: json.dumps(owner_of(owner_tags())),
    }


def objective(trial: optuna.Trial, search: Search) -> float:
    """Run the trial; its value is the objective metric at its last epoch (a NaN makes it FAIL)."""
    study_name = trial.study.study_name
    record_owner(trial)
    # Not one sampler per process: two workers, or one after a restart, would repeat its draws.
    trial.study.sampler = make_sampler(search, trial.number)
    suggest(trial, search)
    trial.set_user_attr("commit", git("rev-parse", "HEAD"))
    name = trial_name(study_name, trial.number)
    log = log_directory(study_name) / f"{name}.log"
    start = time.monotonic()
    # Training only: a trial never reads the test split.
    try:
        with log.open("w", encoding="utf-8") as output:
            overrides = trial_overrides(search, trial.params)
            returncode = run_experiment(name, overrides, "train", output=output, env=trial_environment(trial))
    except KeyboardInterrupt:
        tag_run(trial.study.get_trials(deepcopy=False)[trial.number], "failed")
        raise  # optimize() marks the trial FAIL
    trial.set_user_attr("wall_seconds", round(time.monotonic() - start, 2))
    if fitted := FITTED.findall(log.read_text(encoding="utf-8", errors="replace")):
        trial.set_user_attr("fit_seconds", float(fitted[-1]))
    # As stored (trials in the order of their numbers): with what its train process wrote.
    ended = trial.study.get_trials(deepcopy=False)[trial.number]
    if returncode != 0 and search_storage.PRUNED_ATTRIBUTE in ended.user_attrs:
        raise optuna.TrialPruned(f"Stopped after epoch {ended.user_attrs[search_storage.PRUNED_ATTRIBUTE]}.")
    if returncode != 0 or not ended.intermediate_values:
        raise TrialFailed(f"trial {trial.number} failed: see {log}")
    return ended.intermediate_values[ended.last_step]


def main() -> None:
    parser = argparse.ArgumentParser(description="One worker of `mlp search`; Optuna logs each trial's end.")
    parser.add_argument("search_file", type=Path)
    parser.add_argument("study")
    parser.add_argument("deadline", type=float, help="no trial starts after this time (seconds since the epoch)")
    arguments = parser.parse_args()
    search = Search.load(arguments.search_file)
    storage = search_storage.open_storage(os.environ[search_storage.STORAGE_VARIABLE])
    study = search_storage.open_study(arguments.study, storage)
    states: list[TrialState] = []

    def ended(study: optuna.Study, trial: FrozenTrial) -> None:
        tag_run(trial, trial.state.name.lower())
        states.append(trial.state)

    while budget_left(study, search, arguments.deadline):
        # Any error but TrialFailed is ours, not the trial's: optimize() marks the trial FAIL and raises it.
        study.optimize(lambda trial: objective(trial, search), n_trials=1, catch=(TrialFailed,), callbacks=[ended])
        if states[-MAX_FAILURES_IN_A_ROW:] == [TrialState.FAIL] * MAX_FAILURES_IN_A_ROW:
            raise PipelineError(
                f"{MAX_FAILURES_IN_A_ROW} trials failed in a row: see their logs in {log_directory(study.study_name)}"
            )


if __name__ == "__main__":
    run_stage(main)
