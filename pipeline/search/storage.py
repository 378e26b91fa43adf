"""What `mlp search` and a trial's train stage share: the variables that make a run a trial, the attributes
each side writes for the other, and how each side opens the study. Optuna is imported where used: a train
stage that is no trial never loads it.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import time

from pipeline.stage import causes

TRIAL_VARIABLE = "MLP_SEARCH_TRIAL"  # the trial's number in its study; set: this run is a trial
STORAGE_VARIABLE = "MLP_SEARCH_STORAGE"  # an SQLAlchemy URL, or the path of a journal file
STUDY_VARIABLE = "MLP_SEARCH_STUDY"
PARENT_RUN_VARIABLE = "MLP_SEARCH_PARENT_RUN"  # the study's MLflow run, parent of every trial's
WORKER_VARIABLE = "MLP_SEARCH_WORKER"  # the `mlp search` process, as JSON: pipeline.run_owner.owner_of's fields

# Study attributes the worker writes and the trial reads.
METRIC_ATTRIBUTE = "objective_metric"
PRUNER_ATTRIBUTE = "pruner"
# Trial attributes the trial writes and the worker reads.
PRUNED_ATTRIBUTE = "pruned_at_epoch"
RUN_ATTRIBUTE = "mlflow_run_id"
STATE_TAG = "search.state"

# A database server that answered once and then refuses connections is restarting (`mlp server stop` and
# `start`): wait for it as long as the heartbeat grace period, past which other workers fail our trials anyway.
HEARTBEAT_SECONDS, GRACE_SECONDS = 30, 120
RECONNECT_SECONDS = 5
MAX_ATTEMPTS = 3

logger = logging.getLogger(__name__)


def is_trial() -> bool:
    return bool(os.environ.get(TRIAL_VARIABLE))


def open_storage(location: str):
    """The Optuna storage at `location`: an SQLAlchemy URL (e.g. postgresql+psycopg://...) or a journal file."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if "://" in location:
        import sqlalchemy

        # Heartbeats let any worker fail the trials of a worker that died on another machine. pool_pre_ping:
        # a pooled connection is tested before use, so one a restarted server closed is replaced, not used.
        storage = optuna.storages.RDBStorage(
            location,
            engine_kwargs={"pool_pre_ping": True},
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
        )
        # Only now: a first connection that fails (no server, a wrong password) fails at once.
        sqlalchemy.event.listen(storage.engine, "do_connect", connect_through_restarts)
        retry_through_restarts(storage)
        return storage
    # The open(O_EXCL) lock, not the symlink one: it also works on file systems without symlinks.
    return optuna.storages.JournalStorage(JournalFileBackend(location, lock_obj=JournalFileOpenLock(location)))


def connect_through_restarts(dialect, connection_record, connect_arguments, connect_keywords):
    """SQLAlchemy's do_connect hook: connect, retrying every few seconds, each retry logged, for up to
    GRACE_SECONDS while the database refuses (the heartbeat thread and a trial's report wait instead of failing)."""
    deadline = time.monotonic() + GRACE_SECONDS
    while True:
        try:
            return dialect.connect(*connect_arguments, **connect_keywords)
        except dialect.loaded_dbapi.OperationalError as error:
            if time.monotonic() > deadline:
                raise
            reason = str(error).strip().splitlines()[0]
            logger.warning("the search database refuses connections (%s): retrying in %d s", reason, RECONNECT_SECONDS)
            time.sleep(RECONNECT_SECONDS)


def retry_through_restarts(storage) -> None:
    """Make each of `storage`'s public methods run again when the database ended its connection mid-call
    (PostgreSQL's fast shutdown ends every session); the next attempt's connection waits for the restart.

    On the instance, not a subclass: Optuna, imported where used, stays out of a train stage that is no trial.
    A call that ran again had not committed (fast shutdown rolls back what it interrupts), but for the one
    statement a shutdown can fall between a commit and its answer: a report or attribute then writes the
    same value again."""
    for name in dir(storage):
        method = getattr(storage, name)
        if not name.startswith("_") and inspect.ismethod(method):
            setattr(storage, name, functools.partial(call_retrying, method))


def call_retrying(method, *arguments, **keywords):
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return method(*arguments, **keywords)
        except Exception as error:
            # DBAPIError's flag: SQLAlchemy found the connection gone (and discarded it), somewhere in the chain.
            lost = any(getattr(link, "connection_invalidated", False) for link in causes(error))
            if attempt == MAX_ATTEMPTS or not lost:
                raise
            logger.warning("the search database ended its connection in %s: retrying", method.__name__)


def make_pruner(spec: dict):
    """An Optuna pruner from its spec: {"name": median|successive_halving|hyperband|none, ...its settings}."""
    import optuna

    settings = {key: value for key, value in spec.items() if key != "name"}
    pruners = {
        "median": optuna.pruners.MedianPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }
    return pruners[spec["name"]](**settings)


def open_study(study_name: str, storage):
    """Load the study pipeline.search.coordinator created, with its pruner (Hyperband's brackets steer the sampler)."""
    import optuna

    attributes = storage.get_study_user_attrs(storage.get_study_id_from_name(study_name))
    pruner = make_pruner(attributes[PRUNER_ATTRIBUTE])
    return optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
