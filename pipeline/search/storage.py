"""What `mlp search` and a trial's train stage share: the environment variables that make a run a trial,
the study and trial attributes each side writes for the other, and how each side opens the study.

Optuna is imported where used: a train stage that is no trial never loads it.
"""

from __future__ import annotations

import os

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


def is_trial() -> bool:
    return bool(os.environ.get(TRIAL_VARIABLE))


def open_storage(location: str):
    """The Optuna storage at `location`: an SQLAlchemy URL (e.g. postgresql+psycopg://...) or a journal file."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if "://" in location:
        # Heartbeats let any worker fail the trials of a worker that died on another machine.
        return optuna.storages.RDBStorage(location, heartbeat_interval=30, grace_period=120)
    # The open(O_EXCL) lock, not the symlink one: it also works on file systems without symlinks.
    return optuna.storages.JournalStorage(JournalFileBackend(location, lock_obj=JournalFileOpenLock(location)))


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
    """Load the study pipeline.search.study created, with its pruner (Hyperband's brackets steer the sampler)."""
    import optuna

    attributes = storage.get_study_user_attrs(storage.get_study_id_from_name(study_name))
    pruner = make_pruner(attributes[PRUNER_ATTRIBUTE])
    return optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
