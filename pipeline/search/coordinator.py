"""What `mlp search` does on its machine once the search is checked: run the trials on `--workers` threads,
show the study's progress, keep the study's MLflow run, write the report.

Each thread asks the study for a trial and runs it as a `dvc exp run --temp ... train` child of this process,
in its process group: when `mlp search` is killed, its whole group goes, and no trial runs on unrecorded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from pipeline.config import compose, parse_params
from pipeline.download import MIRROR_ENVIRONMENT_VARIABLE
from pipeline.errors import PipelineError
from pipeline.git import git
from pipeline.run_owner import owner_of, owner_tags
from pipeline.search import storage as search_storage
from pipeline.search.report import write_report
from pipeline.search.schema import CategoricalParameter, FloatParameter, Search, max_epochs, trial_overrides
from pipeline.search.study import (
    PARENT_RUN_ATTRIBUTE,
    create_study,
    fail_abandoned_trials,
    log_directory,
    record_owner,
    tag_run,
    trial_name,
)
from pipeline.study.runner import STOP_TIMEOUT_SECONDS, current_commit, run_experiment, stop_experiments
from pipeline.tracking import client, experiment_id

logger = logging.getLogger(__name__)

POLL_SECONDS = 2
# Trials failing one after another: a broken setup, not bad luck with parameters.
MAX_FAILURES_IN_A_ROW = 3
FITTED = re.compile(r"fitted in ([0-9.]+) s")
# Paths a user may give relative to where `mlp search` runs; a trial runs in DVC's temporary copy.
PATH_VARIABLES = ("PGPASSFILE", MIRROR_ENVIRONMENT_VARIABLE)


class TrialFailed(PipelineError):
    """The trial's DVC experiment failed: the study records it FAIL and the worker goes on."""


def run_search(arguments: argparse.Namespace, path: Path, search: Search, study_name: str) -> None:
    """Run the trials to the budget on `arguments.workers` threads, write the report (pipeline.commands.search)."""
    base = parse_params(compose(search.base_overrides()), path)
    current_commit()  # trials are DVC experiments: they need a commit to start from
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says it all
    for variable in PATH_VARIABLES:
        if os.environ.get(variable) and "://" not in os.environ[variable]:
            os.environ[variable] = os.path.abspath(os.environ[variable])
    location = absolute_location(
        arguments.storage
        or os.environ.get(search_storage.STORAGE_VARIABLE)
        or str(log_directory(study_name) / "study.journal")
    )
    study = create_study(study_name, location, search, max_epochs=max_epochs(search, base.train.epochs))
    fail_abandoned_trials(study)
    parent = parent_run(study, base.mlflow.experiment_name)
    failure = None
    if not arguments.report_only:
        try:
            run_workers(search, study, location, workers=arguments.workers)
        except KeyboardInterrupt:
            end_parent_run(study, parent, "KILLED")  # no report: the user asked to stop, and it would retrain
            raise
        except PipelineError as error:
            failure = error  # a worker failed: the trials run so far are reported all the same
    if not arguments.no_report:
        logger.info("report: %s", write_report(study, search, path, parent_run_id=parent) / "README.md")
    end_parent_run(study, parent, "FAILED" if failure else "FINISHED")
    if failure:
        raise failure


def absolute_location(location: str) -> str:
    """The storage's location with a relative file (a journal, an SQLite database) made absolute."""
    if "://" not in location:
        return os.path.abspath(location)
    from sqlalchemy.engine import make_url

    url = make_url(location)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return url.set(database=os.path.abspath(url.database)).render_as_string(hide_password=False)
    return location


def parent_run(study: optuna.Study, experiment_name: str) -> str:
    """The study's MLflow run, parent of every trial's: created by the first `mlp search`, reopened by the next."""
    run_id = study.user_attrs.get(PARENT_RUN_ATTRIBUTE)
    if run_id:
        client().update_run(run_id, status="RUNNING")
        return run_id
    tags = {"search.study": study.study_name, "search.role": "study"}
    run = client().create_run(experiment_id(experiment_name), run_name=f"search {study.study_name}", tags=tags)
    study.set_user_attr(PARENT_RUN_ATTRIBUTE, run.info.run_id)
    return run.info.run_id


def end_parent_run(study: optuna.Study, run_id: str, status: str) -> None:
    """End the study's run, unless trials still run (workers of another machine): then the last to stop ends it."""
    if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        client().set_terminated(run_id, status)


def run_workers(search: Search, study: optuna.Study, location: str, *, workers: int) -> None:
    """Run the workers until each has found the budget spent, then wait for the trials others run (another
    `mlp search`, another machine) to end: the report then counts every trial as it ended."""
    deadline = time.time() + 60 * (search.budget.timeout_minutes or 10**9)
    stop = threading.Event()
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="worker")
    futures = [executor.submit(work, search, study.study_name, location, deadline, stop) for _ in range(workers)]
    try:
        with tqdm(total=search.budget.n_trials, desc=study.study_name, unit="trial", dynamic_ncols=True) as bar:
            while show_progress(bar, study)[TrialState.RUNNING] or not all(future.done() for future in futures):
                time.sleep(POLL_SECONDS)
                fail_abandoned_trials(study)
    except KeyboardInterrupt:
        logger.warning("interrupted: stopping the trials")
        stop.set()
        stop_experiments(signal.SIGINT)
        # Each worker tells the study its trial FAILED once its experiment has stopped.
        if wait(futures, timeout=STOP_TIMEOUT_SECONDS).not_done:
            stop_experiments(signal.SIGKILL)
        raise
    finally:
        executor.shutdown()
    for future in futures:
        future.result()  # a worker's error: 3 trials failed in a row, or a bug


def show_progress(bar: tqdm, study: optuna.Study) -> Counter:
    counts = Counter(trial.state for trial in study.get_trials(deepcopy=False))
    bar.n = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    bar.set_postfix(
        done=counts[TrialState.COMPLETE],
        pruned=counts[TrialState.PRUNED],
        failed=counts[TrialState.FAIL],
        running=counts[TrialState.RUNNING],
        best=f"{study.best_value:.4f}" if counts[TrialState.COMPLETE] else "-",
    )
    return counts


def work(search: Search, study_name: str, location: str, deadline: float, stop: threading.Event) -> None:
    """One worker: run the study's trials, one at a time, until the budget is spent or `stop` is set.

    Its own storage and study objects: the sampler it sets for each trial is no other worker's."""
    study = search_storage.open_study(study_name, search_storage.open_storage(location))
    states: list[TrialState] = []

    def ended(study: optuna.Study, trial: FrozenTrial) -> None:
        tag_run(trial, "failed" if trial.state == TrialState.FAIL else trial.state.name.lower())
        states.append(trial.state)

    while not stop.is_set() and budget_left(study, search, deadline):
        # Any error but TrialFailed is ours, not the trial's: optimize() marks the trial FAIL and raises it.
        study.optimize(
            lambda trial: run_trial(trial, search, location), n_trials=1, catch=(TrialFailed,), callbacks=[ended]
        )
        if states[-MAX_FAILURES_IN_A_ROW:] == [TrialState.FAIL] * MAX_FAILURES_IN_A_ROW and not stop.is_set():
            raise PipelineError(
                f"{MAX_FAILURES_IN_A_ROW} trials failed in a row: see their logs in {log_directory(study_name)}"
            )


def budget_left(study: optuna.Study, search: Search, deadline: float) -> bool:
    """Whether another trial may start: before the deadline, and fewer than n_trials counted or running."""
    counted = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    return time.time() < deadline and (search.budget.n_trials is None or len(counted) < search.budget.n_trials)


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


def trial_environment(trial: optuna.Trial, location: str) -> dict[str, str]:
    """What makes the train stage a trial of this study, and lets it find this `mlp search` gone."""
    return os.environ | {
        search_storage.STORAGE_VARIABLE: location,
        search_storage.TRIAL_VARIABLE: str(trial.number),
        search_storage.STUDY_VARIABLE: trial.study.study_name,
        search_storage.PARENT_RUN_VARIABLE: trial.study.user_attrs[PARENT_RUN_ATTRIBUTE],
        search_storage.WORKER_VARIABLE: json.dumps(owner_of(owner_tags())),
    }


def run_trial(trial: optuna.Trial, search: Search, location: str) -> float:
    """Run the trial; its value is the objective metric at its last epoch (a NaN makes it FAIL)."""
    study_name = trial.study.study_name
    record_owner(trial)
    # Not one sampler per study: two workers, or one after a restart, would repeat its draws.
    trial.study.sampler = make_sampler(search, trial.number)
    suggest(trial, search)
    trial.set_user_attr("commit", git("rev-parse", "HEAD"))
    name = trial_name(study_name, trial.number)
    log = log_directory(study_name) / f"{name}.log"
    start = time.monotonic()
    # Training only: a trial never reads the test split.
    with log.open("w", encoding="utf-8") as output:
        overrides = trial_overrides(search, trial.params)
        returncode = run_experiment(name, overrides, "train", output=output, env=trial_environment(trial, location))
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
