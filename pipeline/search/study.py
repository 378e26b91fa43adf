"""A search's Optuna study: created or joined, and which worker runs each trial.

A trial left RUNNING by an `mlp search` of this host that is gone (kill -9, crash) is marked FAIL by the next
`mlp search`; with PostgreSQL, heartbeats let any machine fail the trials of a worker silent for two minutes.
"""

from __future__ import annotations

import json
import logging
import socket
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.errors import ConfigError
from pipeline.run_owner import owner_is_alive, owner_of, owner_tags
from pipeline.search import storage as search_storage
from pipeline.search.schema import METRIC_DIRECTIONS, Search
from pipeline.tracking import client, repository_root

logger = logging.getLogger(__name__)

OWNER_ATTRIBUTE = "worker"
SEARCH_ATTRIBUTE = "search"  # the search file's content the study was started from
PARENT_RUN_ATTRIBUTE = "mlflow_parent_run_id"
UNNAMED_SECONDS = 60  # a worker names itself on its trial within a second of the trial's start


def log_directory(study_name: str) -> Path:
    directory = repository_root() / ".search" / study_name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def trial_name(study_name: str, number: int) -> str:
    """The DVC experiment (and MLflow run) name of a trial, e.g. mnist-trial-007."""
    return f"{study_name.replace('_', '-')}-trial-{number:03d}"


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


def record_owner(trial: optuna.Trial) -> None:
    """Name this process, `mlp search`, as the trial's worker (a system attribute: Trial sets user ones only)."""
    study_id = trial.storage.get_study_id_from_name(trial.study.study_name)
    trial_id = trial.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    trial.storage.set_trial_system_attr(trial_id, OWNER_ATTRIBUTE, owner_of(owner_tags()))


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
    run_id = trial.user_attrs.get(search_storage.RUN_ATTRIBUTE)
    if run_id:
        client().set_tag(run_id, search_storage.STATE_TAG, state)
