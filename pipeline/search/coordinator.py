"""What `mlp search` does on its machine: create or join the study, run its trials on `--workers` threads,
fail the trials whose worker is gone, keep the study's MLflow run and write the report.

Each trial runs as a `dvc exp run --temp ... train` child of this process, in its process group: when
`mlp search` is killed, its whole group goes, and no trial runs on unrecorded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import signal
import socket
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime, timedelta
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from pipeline.config import compose, parse_params
from pipeline.download import MIRROR_ENVIRONMENT_VARIABLE
from pipeline.errors import ConfigError, PipelineError
from pipeline.git import git
from pipeline.run_owner import owner_is_alive, owner_of, owner_tags
from pipeline.search import storage as search_storage
from pipeline.search.report import write_report
from pipeline.search.schema import (
    METRIC_DIRECTIONS,
    CategoricalParameter,
    FloatParameter,
    Search,
    max_epochs,
    trial_name,
    trial_overrides,
)
from pipeline.study.runner import STOP_TIMEOUT_SECONDS, current_commit, run_experiment, stop_experiments
from pipeline.tracking import client, experiment_id, repository_root

logger = logging.getLogger(__name__)

POLL_SECONDS = 2
# Trials failing one after another: a broken setup, not bad luck with parameters.
MAX_FAILURES_IN_A_ROW = 3
FITTED = re.compile(r"fitted in ([0-9.]+) s")
# Paths a user may give relative to where `mlp search` runs; a trial runs in DVC's temporary copy.
PATH_VARIABLES = ("PGPASSFILE", MIRROR_ENVIRONMENT_VARIABLE)
OWNER_ATTRIBUTE = "worker"
SEARCH_ATTRIBUTE = "search"  # the search file's content the study was started from
PARENT_RUN_ATTRIBUTE = "mlflow_parent_run_id"
UNNAMED_SECONDS = 60  # a worker names itself on its trial within a second of the trial's start


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


def log_directory(study_name: str) -> Path:
    directory = repository_root() / ".search" / study_name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def create_study(study_name: str, location: str, search: Search, *, max_epochs: int) -> optuna.Study:
    """Create the study or join it; refuse to join one started from another search file."""
    pruner_spec = search.pruner.spec(max_epochs)
    # The budget may change between runs (a longer search); what is searched, and for what, may not.
    fingerprint = json.dumps(search.model_dump(mode="json", exclude={"budget"}), sort_keys=True)
    study = optuna.create_study(
        study_name=study_name,
        storage=search_storage.open_storage(location),
        direction=METRIC_DIRECTIONS[search.objective.metric],
        pruner=search_storage.make_pruner(pruner_spec),
        load_if_exists=True,
    )
    started_from = study.user_attrs.get(SEARCH_ATTRIBUTE)
    if started_from is None:
        study.set_user_attr(SEARCH_ATTRIBUTE, fingerprint)
        study.set_user_attr(search_storage.METRIC_ATTRIBUTE, search.objective.metric)
        study.set_user_attr(search_storage.PRUNER_ATTRIBUTE, pruner_spec)
    elif started_from != fingerprint:
        raise ConfigError(
            f"study {study_name} was started from another version of its search file: "
            "restore that file, or start a new study with --study NEW_NAME"
        )
    return study


def parent_run(study: optuna.Study, experiment_name: str) -> str:
    """The study's MLflow run, parent of every trial's: created by the first `mlp search`, reopened by the next."""
    if run_id := study.user_attrs.get(PARENT_RUN_ATTRIBUTE):
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
    """Run the workers to the budget, then wait for other commands' trials: the report counts each as it ended."""
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


def fail_abandoned_trials(study: optuna.Study) -> None:
    """Mark FAIL the RUNNING trials whose worker is gone, or that never named one (killed as it started)."""
    with warnings.catch_warnings():  # "experimental" since Optuna 2.9; what optimize() itself calls
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # heartbeats, where the storage keeps them
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.system_attrs.get(OWNER_ATTRIBUTE)
        # Other hosts' workers cannot be probed from here: heartbeats judge those.
        unnamed = not owner and trial.datetime_start < datetime.now() - timedelta(seconds=UNNAMED_SECONDS)
        if unnamed or (owner and owner.get("host") == socket.gethostname() and not owner_is_alive(owner)):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)  # another process may be first
            tag_run(trial, "failed")  # its train process may have finished the MLflow run after the worker died
            logger.warning("trial %d: its worker is gone (killed or crashed); marked FAIL", trial.number)


def tag_run(trial: FrozenTrial, state: str) -> None:
    if run_id := trial.user_attrs.get(search_storage.RUN_ATTRIBUTE):
        client().set_tag(run_id, search_storage.STATE_TAG, state)


def work(search: Search, study_name: str, location: str, deadline: float, stop: threading.Event) -> None:
    """One worker, with its own storage and study objects: the sampler it sets for a trial is no other worker's."""
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


def record_owner(trial: optuna.Trial) -> None:
    """Name this process, `mlp search`, as the trial's worker (a system attribute: Trial sets user ones only)."""
    study_id = trial.storage.get_study_id_from_name(trial.study.study_name)
    trial_id = trial.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    trial.storage.set_trial_system_attr(trial_id, OWNER_ATTRIBUTE, owner_of(owner_tags()))


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
