"""The train stage's side of a search trial: tags for its MLflow run, and a Keras callback that reports each
epoch's validation metric to Optuna and stops a pruned trial; without a trial, no tags, no callback, no Optuna.
"""

from __future__ import annotations

import json
import os

import keras
import mlflow

from pipeline.errors import PipelineError
from pipeline.run_owner import owner_is_alive
from pipeline.search import storage


class TrialPruned(PipelineError):
    """The pruner stopped this trial: its validation metric trailed the other trials' at the same epoch."""


def run_tags() -> dict[str, str]:
    """The tags that make a trial's MLflow run a child of the study's run, with its number and params."""
    if not storage.is_trial():
        return {}
    trial, _ = current_trial()
    tags = {
        "mlflow.parentRunId": os.environ[storage.PARENT_RUN_VARIABLE],
        "search.study": os.environ[storage.STUDY_VARIABLE],
        "search.trial": os.environ[storage.TRIAL_VARIABLE],
        storage.STATE_TAG: "running",
    }
    return tags | {f"search.param.{name}": json.dumps(value) for name, value in trial.params.items()}


def checkpoint_owner() -> dict[str, str]:
    """Part of the checkpoint's fingerprint: a trial never resumes the checkpoint another trial left
    (pruned or killed with the same params), which would continue that trial's MLflow run."""
    if not storage.is_trial():
        return {}
    return {"search_trial": f"{os.environ[storage.STUDY_VARIABLE]}/{os.environ[storage.TRIAL_VARIABLE]}"}


def callbacks() -> list[keras.callbacks.Callback]:
    return [TrialReporter(*current_trial())] if storage.is_trial() else []


def current_trial():
    """The running trial (an optuna.Trial, with its study's pruner) this process trains, and its objective metric."""
    import optuna

    trials = storage.open_storage(os.environ[storage.STORAGE_VARIABLE])
    study = storage.open_study(os.environ[storage.STUDY_VARIABLE], trials)
    study_id = trials.get_study_id_from_name(study.study_name)
    trial_id = trials.get_trial_id_from_study_id_trial_number(study_id, int(os.environ[storage.TRIAL_VARIABLE]))
    return optuna.trial.Trial(study, trial_id), study.user_attrs[storage.METRIC_ATTRIBUTE]


class TrialReporter(keras.callbacks.Callback):
    """Reports the objective metric at every epoch end (step = epoch) and stops the training when pruned."""

    def __init__(self, trial, metric: str):
        super().__init__()
        self.trial, self.metric = trial, metric

    def on_train_begin(self, logs=None) -> None:
        self.trial.set_user_attr(storage.RUN_ATTRIBUTE, mlflow.active_run().info.run_id)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if not owner_is_alive(json.loads(os.environ[storage.WORKER_VARIABLE])):  # kill -9: nothing would record it
            mlflow.set_tag(storage.STATE_TAG, "failed")
            raise KeyboardInterrupt("the search worker that started this trial is gone")
        if self.metric not in (logs or {}):
            raise PipelineError(f"the search objective {self.metric} is not logged: it needs a validation split")
        value = float(logs[self.metric])
        self.trial.report(value, step=epoch + 1)
        if self.trial.should_prune():
            self.trial.set_user_attr(storage.PRUNED_ATTRIBUTE, epoch + 1)
            # The stage exits 1: DVC records no experiment for a model that did not train the epochs its params say.
            mlflow.set_tag(storage.STATE_TAG, "pruned")
            mlflow.end_run("KILLED")
            raise TrialPruned(f"trial {self.trial.number} pruned after epoch {epoch + 1}: {self.metric} {value:.4f}")
