"""A search's Optuna study: where it is stored, how it samples, who runs its trials.

The default storage is a journal file, .search/<study>/study.journal at the
repository root (git-ignored), for the workers of one machine. A PostgreSQL
URL (`--storage postgresql+psycopg://...` or MLP_SEARCH_STORAGE) shares the
study between machines: `mlp search` there joins it.

Each running trial names its worker (host, pid, process start time, boot id,
as MLflow runs name their owner): a trial left RUNNING by a worker of this host
that is gone (kill -9, crash) is marked FAIL by the next `mlp search`. With
PostgreSQL, workers also record heartbeats, so any machine fails the trials of
a worker that stopped beating for two minutes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.trial import TrialState

from pipeline.errors import ConfigError
from pipeline.run_owner import owner_is_alive, owner_of, owner_tags
from pipeline.search import storage as search_storage
from pipeline.search.schema import Sampler, Search
from pipeline.tracking import client, repository_root

logger = logging.getLogger(__name__)

SEARCH_DIRECTORY = ".search"
OWNER_ATTRIBUTE = "worker"
SEARCH_ATTRIBUTE = "search"  # the search file's content the study was started from
PARENT_RUN_ATTRIBUTE = "mlflow_parent_run_id"


def log_directory(study_name: str) -> Path:
    directory = repository_root() / SEARCH_DIRECTORY / study_name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def default_storage(study_name: str) -> str:
    return str(log_directory(study_name) / "study.journal")


def trial_name(study_name: str, number: int) -> str:
    """The DVC experiment (and MLflow run) name of a trial, e.g. mnist-trial-007."""
    return f"{study_name.replace('_', '-')}-trial-{number:03d}"


def make_sampler(sampler: Sampler, trial_number: int = 0) -> optuna.samplers.BaseSampler:
    # One seed per (search seed, trial number), mixed so that neighbouring trials' streams are unrelated.
    seed = int.from_bytes(hashlib.sha256(f"{sampler.seed}:{trial_number}".encode()).digest()[:4], "big")
    if sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sampler.n_startup_trials)


def open_study(study_name: str, location: str, search: Search) -> optuna.Study:
    """Load the study, created by `mlp search` (create_study) with the search's direction and pruner."""
    storage = search_storage.open_storage(location)
    attributes = storage.get_study_user_attrs(storage.get_study_id_from_name(study_name))
    pruner = search_storage.make_pruner(attributes[search_storage.PRUNER_ATTRIBUTE])
    return optuna.load_study(
        study_name=study_name, storage=storage, pruner=pruner, sampler=make_sampler(search.sampler)
    )


def create_study(study_name: str, location: str, search: Search, *, max_epochs: int) -> optuna.Study:
    """Create the study or join it; refuse to join one started from another search file."""
    pruner_spec = search.pruner.spec(max_epochs)
    # The budget may change between runs (a longer search); what is searched, and for what, may not.
    fingerprint = json.dumps(search.model_dump(mode="json", exclude={"budget"}), sort_keys=True)
    study = optuna.create_study(
        study_name=study_name,
        storage=search_storage.open_storage(location),
        direction=search.objective.goal,
        sampler=make_sampler(search.sampler),
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


def trials_in(study: optuna.Study, *states: TrialState) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=states)


def record_owner(study: optuna.Study, trial: optuna.Trial) -> None:
    study._storage.set_trial_system_attr(trial._trial_id, OWNER_ATTRIBUTE, owner_of(owner_tags()))


def fail_abandoned_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone; return their numbers."""
    failed = []
    with warnings.catch_warnings():  # "experimental" since Optuna 2.9; what optimize() itself calls
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # heartbeats, where the storage keeps them
    host = socket.gethostname()
    for trial in trials_in(study, TrialState.RUNNING):
        owner = trial.system_attrs.get(OWNER_ATTRIBUTE)
        # Other hosts' workers cannot be probed from here: heartbeats judge those.
        if owner and owner.get("host") == host and not owner_is_alive(owner):
            try:
                study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process failed it first
            failed.append(trial.number)
            tag_failed(trial)
    for number in failed:
        logger.warning("trial %d: its worker is gone (killed or crashed); marked FAIL", number)
    return failed


def tag_failed(trial: optuna.trial.FrozenTrial) -> None:
    """Mark the trial's MLflow run failed: its train process may have finished it after the worker died."""
    run_id = trial.user_attrs.get(search_storage.RUN_ATTRIBUTE)
    if run_id:
        client().set_tag(run_id, search_storage.STATE_TAG, "failed")


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat in the background while it runs, where the storage keeps heartbeats."""
    storage = study._storage
    interval = storage.get_heartbeat_interval() if isinstance(storage, optuna.storages.RDBStorage) else None
    if not interval:
        yield
        return
    stopped = threading.Event()

    def beat() -> None:
        while not stopped.is_set():
            storage.record_heartbeat(trial._trial_id)
            stopped.wait(interval)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        thread.join()
