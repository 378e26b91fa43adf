"""One search worker: ask the study for a trial, run it as a DVC experiment, tell the study how it ended.

    python -m pipeline.search.worker SEARCH_FILE STUDY DEADLINE

`mlp search` starts K of these; the storage's location comes in the
environment (MLP_SEARCH_STORAGE: a PostgreSQL URL holds a password, and
arguments show in `ps`). Each trial is `dvc exp run --temp --name
<study>-trial-<NNN> train -S ...` in a process group of its own, its output in
.search/<study>/trial-<NNN>.log. Ctrl+C or SIGTERM stops the running trial (its
MLflow run ends KILLED) and marks it FAIL; after kill -9 the trial notices the
worker is gone at its next epoch end, and the next `mlp search` marks it FAIL.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from pipeline.errors import PipelineError
from pipeline.git import git
from pipeline.run_owner import owner_of, owner_tags
from pipeline.search import storage as search_storage
from pipeline.search.schema import CategoricalParameter, FloatParameter, Search, load_search, trial_overrides
from pipeline.search.study import (
    PARENT_RUN_ATTRIBUTE,
    heartbeat,
    log_directory,
    make_sampler,
    open_study,
    record_owner,
    trial_name,
    trials_in,
)
from pipeline.stage import run_stage
from pipeline.tracking import client

logger = logging.getLogger(__name__)

# A stopped trial's DVC and train processes get this long to end their MLflow run before SIGKILL.
STOP_TIMEOUT_SECONDS = 60
# Trials failing one after another: a broken setup, not bad luck with parameters.
MAX_FAILURES_IN_A_ROW = 3
FITTED = re.compile(r"fitted in ([0-9.]+) s")


def suggest(trial: optuna.Trial, search: Search) -> dict[str, object]:
    values = {}
    for name, parameter in search.parameters.items():
        if isinstance(parameter, CategoricalParameter):
            values[name] = trial.suggest_categorical(name, parameter.choices)
        elif isinstance(parameter, FloatParameter):
            values[name] = trial.suggest_float(name, parameter.low, parameter.high, log=parameter.log)
        else:
            values[name] = trial.suggest_int(
                name, parameter.low, parameter.high, step=parameter.step, log=parameter.log
            )
    return values


def budget_left(study: optuna.Study, search: Search, deadline: float) -> bool:
    """Whether another trial may start: before the deadline, and fewer than n_trials counted or running."""
    if time.time() >= deadline:
        return False
    if search.budget.n_trials is None:
        return True
    counted = trials_in(study, TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return len(counted) < search.budget.n_trials


def run_trial(study: optuna.Study, trial: optuna.Trial, overrides: list[str], log: Path) -> subprocess.Popen:
    """Start the trial's DVC experiment, training only: the test split is never read by a trial."""
    settings = [argument for override in overrides for argument in ("-S", override)]
    name = trial_name(study.study_name, trial.number)
    owner = owner_of(owner_tags())
    environment = os.environ | {
        search_storage.TRIAL_VARIABLE: str(trial.number),
        search_storage.STUDY_VARIABLE: study.study_name,
        search_storage.PARENT_RUN_VARIABLE: study.user_attrs[PARENT_RUN_ATTRIBUTE],
        search_storage.WORKER_VARIABLE: " ".join(owner[key] for key in ("pid", "start_time", "boot_id")),
    }
    command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "--name", name, "train", *settings]
    with log.open("w", encoding="utf-8") as stream:
        # A group of its own: DVC ignores SIGINT while its stage runs, so a stop reaches the stage through the group.
        return subprocess.Popen(command, env=environment, stdout=stream, stderr=subprocess.STDOUT, process_group=0)


def stop(process: subprocess.Popen) -> None:
    """SIGINT to the trial's process group (the train stage ends its MLflow run KILLED), SIGKILL if it lingers."""
    for sent in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(process.pid, sent)
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def outcome(study: optuna.Study, trial: optuna.Trial, returncode: int) -> tuple[TrialState, float | None]:
    """How the trial ended: COMPLETE with the objective's last epoch value, PRUNED, or FAIL."""
    frozen = study._storage.get_trial(trial._trial_id)
    if returncode != 0:
        return (TrialState.PRUNED if search_storage.PRUNED_ATTRIBUTE in frozen.user_attrs else TrialState.FAIL), None
    if not frozen.intermediate_values:
        return TrialState.FAIL, None
    value = frozen.intermediate_values[max(frozen.intermediate_values)]
    return (TrialState.COMPLETE, value) if math.isfinite(value) else (TrialState.FAIL, None)


def one_trial(study: optuna.Study, search: Search) -> TrialState:
    trial = study.ask()
    record_owner(study, trial)
    # Seeded per trial number: the same sequence with one worker, never the same draws
    # in two workers or after a restart (a sampler seeded once per process would repeat them).
    study.sampler = make_sampler(search.sampler, trial.number)
    values = suggest(trial, search)
    trial.set_user_attr("commit", git("rev-parse", "HEAD"))
    log = log_directory(study.study_name) / f"{trial_name(study.study_name, trial.number)}.log"
    start = time.monotonic()
    with heartbeat(study, trial):
        process = run_trial(study, trial, trial_overrides(search, values), log)
        try:
            returncode = process.wait()
        except KeyboardInterrupt:
            stop(process)
            study.tell(trial, state=TrialState.FAIL)
            tag_run(study, trial, "failed")
            raise
    fitted = FITTED.findall(log.read_text(encoding="utf-8", errors="replace"))
    trial.set_user_attr("wall_seconds", round(time.monotonic() - start, 2))
    if fitted:
        trial.set_user_attr("fit_seconds", float(fitted[-1]))
    state, value = outcome(study, trial, returncode)
    if state == TrialState.COMPLETE:
        study.tell(trial, value)
    else:
        study.tell(trial, state=state)
    tag_run(study, trial, state.name.lower())
    if state == TrialState.FAIL:
        logger.warning("trial %d failed: see %s", trial.number, log)
    else:
        logger.info("trial %d %s (%s), %.1f s", trial.number, state.name.lower(), value, time.monotonic() - start)
    return state


def tag_run(study: optuna.Study, trial: optuna.Trial, state: str) -> None:
    """Put the trial's final state on its MLflow run (a pruned run already has it)."""
    run_id = study._storage.get_trial(trial._trial_id).user_attrs.get(search_storage.RUN_ATTRIBUTE)
    if run_id and state != "pruned":
        client().set_tag(run_id, search_storage.STATE_TAG, state)


def work(search_file: Path, study_name: str, deadline: float) -> None:
    search = load_search(search_file)
    study = open_study(study_name, os.environ[search_storage.STORAGE_VARIABLE], search)
    failures = 0
    while budget_left(study, search, deadline):
        state = one_trial(study, search)
        failures = failures + 1 if state == TrialState.FAIL else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            raise PipelineError(f"{failures} trials failed in a row: see their logs in {log_directory(study_name)}")


def main() -> None:
    parser = argparse.ArgumentParser(description="One worker of `mlp search`.")
    parser.add_argument("search_file", type=Path)
    parser.add_argument("study")
    parser.add_argument("deadline", type=float, help="no trial starts after this time (seconds since the epoch)")
    arguments = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work(arguments.search_file, arguments.study, arguments.deadline)


if __name__ == "__main__":
    run_stage(main)
