"""Where MLflow runs go, how a stage opens and closes one, and what it logs.

One MLflow run per pipeline execution: the train stage creates it, the evaluate stage reopens it. A run ends
FINISHED, FAILED or KILLED, never RUNNING: the first process to open the store after a SIGKILL, crash or reboot
ends FAILED the runs of this host whose owner process is gone (pipeline.run_owner). The default store is an SQLite
file at the repository root (DVC_ROOT, also for experiments DVC runs in a temporary copy), created and migrated
under a file lock; MLFLOW_TRACKING_URI overrides it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.data.sources import HTTPDatasetSource, LocalArtifactDatasetSource
from mlflow.entities import LifecycleStage, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request, verify_rest_response

from pipeline.errors import ConfigError, PipelineError
from pipeline.files import write_json
from pipeline.paths import ARTIFACTS_DIRECTORY, RUN_FILE, STORE_FILE, repair_hint, rerun_hint
from pipeline.run_owner import owner_is_alive, owner_of, owner_tags
from pipeline.splits import Split
from pipeline.stage import interrupted, raise_if_interrupted, raised_by_the_store

logger = logging.getLogger(__name__)

FAILURE_REASON = "failure.reason"
MAX_REASON_CHARACTERS = 500  # a line in the MLflow UI; the stage's log has the whole error
# The sha256 of the test inputs and labels a run was scored on: runs compare only on the same test set.
TEST_SET_TAG = "test_set.sha256"

# MLflow's stores but its file store, which MLflow 3 no longer writes new runs to.
STORE_SCHEMES = {"http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks"}
# Stores prepared and swept by this process: once is enough, the next process finds later orphans.
_opened_stores: set[str] = set()


def repository_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def default_tracking_uri() -> str:
    return f"sqlite:///{repository_root() / STORE_FILE}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def default_artifact_root() -> str:
    # Explicit and absolute: MLflow's default (./mlruns) would follow the
    # working directory, which for queued experiments is a temporary copy.
    return (repository_root() / ARTIFACTS_DIRECTORY).as_uri()


@contextmanager
def registered_model_store(model_uri: str) -> Iterator[str]:
    """Point MLflow at the store to load registered model `model_uri` from, without creating one, and yield its
    URI; inside, MLflow's failure to find or load the model becomes one line naming the model and the store."""
    store = tracking_uri()
    if store.startswith("sqlite:///") and not Path(store.removeprefix("sqlite:///")).exists():
        # MLflow would create an empty store there and then report the model missing.
        raise ConfigError(
            f"--model {model_uri}: no MLflow store at {store}: train a model first, or set MLFLOW_TRACKING_URI"
        )
    mlflow.set_tracking_uri(store)
    try:
        yield store
    except (MlflowException, OSError) as error:
        raise ConfigError(f"--model {model_uri}: {str(error).splitlines()[0]} (MLflow store {shown(store)})") from None


def shown(text: str) -> str:
    """`text` as it may be shown: without the user name and password a URL in it may hold."""
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1", text)


def open_store() -> str:
    """Point MLflow at the store; on first use in this process, create it safely and end abandoned runs."""
    uri = tracking_uri()
    if uri.split(":", 1)[0].split("+", 1)[0] not in STORE_SCHEMES:
        raise ConfigError(
            f"MLFLOW_TRACKING_URI={uri} is not a store the pipeline can use: give a tracking server "
            "(http://host:port) or a database (sqlite:///path/mlflow.db, postgresql://...)"
        )
    mlflow.set_tracking_uri(uri)  # note: this also exports MLFLOW_TRACKING_URI
    if uri not in _opened_stores:
        # Only our own SQLite file: a server or another database is created and migrated by whoever runs it.
        # Both store classes migrate a store they find incomplete, without a lock of their own; inside ours,
        # the first process migrates and the others then find every table in place. MLflow caches the engine
        # per URI, so the stores MLflow opens later in this process reuse it and check nothing again.
        if uri == default_tracking_uri():
            with FileLock(f"{repository_root() / STORE_FILE}.lock"):
                TrackingStore(uri, default_artifact_root())
                RegistryStore(uri)
        end_abandoned_runs(MlflowClient(uri))
        _opened_stores.add(uri)
    return uri


def experiment_id(name: str) -> str:
    """The id of MLflow experiment `name`, created with artifacts beside the store if new."""
    uri = open_store()
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        # A tracking server keeps its own artifact root.
        location = None if uri.startswith(("http://", "https://")) else default_artifact_root()
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except MlflowException:
            # Processes started together all find it missing; one creates it.
            if mlflow.get_experiment_by_name(name) is None:
                raise
        experiment = mlflow.get_experiment_by_name(name)
    if experiment.lifecycle_stage == LifecycleStage.DELETED:
        # MLflow keeps the name taken, so neither a run in it nor a new one is possible.
        raise ConfigError(
            f"MLflow experiment '{name}' (id {experiment.experiment_id}) is deleted in {uri}: restore it with "
            f"`MLFLOW_TRACKING_URI={uri} mlflow experiments restore --experiment-id {experiment.experiment_id}`, "
            "or choose another mlflow.experiment_name"
        )
    if "/.dvc/tmp/" in experiment.artifact_location:
        # Created by an experiment DVC ran in a temporary copy: DVC deletes the folder, and the models with it.
        raise ConfigError(
            f"MLflow experiment '{name}' keeps its artifacts in {experiment.artifact_location}, inside DVC's "
            f"temporary folder, which DVC deletes: create it again with `MLFLOW_TRACKING_URI={uri} mlflow "
            f"experiments create -n <name> -l {default_artifact_root()}`, or choose another mlflow.experiment_name"
        )
    check_managed_by_admin("experiment", experiment.experiment_id, name)
    return experiment.experiment_id


def check_managed_by_admin(resource_type: str, resource_id: str, name: str) -> None:
    """On a server with basic auth, refuse an experiment or registered model that a user other than an admin
    manages: its creator does (MLflow's rule), and a user who took a pipeline's name first could tag everyone's
    runs or move @champion to a model of their own. Only an admin sees others' permissions; a user sees their own."""
    uri, username = tracking_uri(), os.environ.get("MLFLOW_TRACKING_USERNAME")
    if not username or not uri.startswith(("http://", "https://")):
        return
    listed = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/users/list", "GET")
    if listed.status_code == 404:
        return  # a server without basic auth: nobody manages anything
    admins = {user["username"]: user["is_admin"] for user in verify_rest_response(listed, "users/list").json()["users"]}
    users = [user for user, is_admin in admins.items() if not is_admin and (admins[username] or user == username)]
    # Imported here: mlflow.server loads MLflow's whole web app (1.5 s), and only a server with basic auth gets here.
    from mlflow.server import get_app_client

    permissions = get_app_client("basic-auth", uri)
    for user in users:
        if permissions.get_user_permission(user, resource_type, resource_id).permission == "MANAGE":
            raise ConfigError(
                f"MLflow {resource_type.replace('_', ' ')} '{name}' on {uri} is managed by user '{user}', not by an "
                "admin: ask an admin to rename it and run `mlp server start`, which creates it again as the admin"
            )


def end_abandoned_runs(store: MlflowClient) -> None:
    """End FAILED the RUNNING runs whose owner process on this host has ended without ending them."""
    host = socket.gethostname()
    experiments = [experiment.experiment_id for experiment in store.search_experiments(max_results=50_000)]
    # Every run first, in one page (as many as a store returns): ending runs while paging would shift the pages.
    running = store.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=50_000) if experiments else []
    for run in running:
        owner = owner_of(run.data.tags)
        # Runs of other hosts are left alone: from here we cannot tell whether their
        # processes still run; nor for runs without an owner (made elsewhere).
        if owner.get("host") != host or owner_is_alive(owner):
            continue
        reason = f"process {owner['pid']} on host {host} ended without finishing the run: killed or crashed"
        status = ended_status(store, run.info.run_id)
        logger.warning("MLflow run %s: %s; ending it %s", run.info.run_id, reason, status)
        store.set_tag(run.info.run_id, FAILURE_REASON, reason)
        store.set_terminated(run.info.run_id, status)


def ended_status(store: MlflowClient, run_id: str) -> str:
    """How a run that failed or was killed ends: FAILED, unless its model is registered. That run finished its
    evaluation once, which a later broken re-run does not undo; no registered version may point at a FAILED run."""
    try:
        registered = store.search_model_versions(f"run_id = '{run_id}'", max_results=1)
    except MlflowException:  # the store itself is what failed
        return "FAILED"
    return "FINISHED" if registered else "FAILED"


@contextmanager
def pipeline_run(
    experiment_name: str | None = None, run_id: str | None = None, tags: dict[str, str] | None = None
) -> Iterator[mlflow.ActiveRun]:
    """Start a new run in `experiment_name` with `tags`, or reopen `run_id` (also one ended FAILED because its
    process was killed); the current process owns it until it ends, always with a final status."""
    if run_id is None:
        run = mlflow.start_run(
            experiment_id=experiment_id(experiment_name),
            run_name=(tags or {}).get("mlflow.runName") or os.environ.get("DVC_EXP_NAME"),
            tags={**(tags or {}), **owner_tags()},
        )
    else:
        run = reopen_run(run_id)
    try:
        yield run
        raise_if_interrupted()  # a signal Python dropped: the run ends KILLED, not FINISHED
    except BaseException as error:
        if interrupted(error):
            mlflow.end_run("KILLED")
            raise
        status = ended_status(MlflowClient(tracking_uri()), run.info.run_id)
        stands = f"a re-run failed ({type(error).__name__}); its registered evaluation stands"
        reason = stands if status == "FINISHED" else failure_reason(error)
        if not raised_by_the_store(error):  # a failing store would make the stage wait out its retries once more
            mlflow.set_tag(FAILURE_REASON, reason)
        mlflow.end_run(status)
        raise
    mlflow.end_run("FINISHED")


def failure_reason(error: BaseException) -> str:
    """One line for a run's failure.reason tag: the exception's type and message, shown() without a login."""
    return shown(" ".join(f"{type(error).__name__}: {error}".split()))[:MAX_REASON_CHARACTERS]


def reopen_run(run_id: str) -> mlflow.ActiveRun:
    """Reopen a finished or failed run: it becomes RUNNING again, owned by this process."""
    uri = open_store()
    store = MlflowClient(uri)
    try:
        # The owner first, then the status (start_run sets it RUNNING): a
        # process sweeping the store in between must not see the run RUNNING
        # under its previous, ended owner.
        store.log_batch(run_id, tags=[RunTag(key, value) for key, value in owner_tags().items()])
        if FAILURE_REASON in store.get_run(run_id).data.tags:
            # It continues: the reason would contradict how it ends this time.
            store.delete_tag(run_id, FAILURE_REASON)
        return mlflow.start_run(run_id=run_id)
    except MlflowException as error:
        raise PipelineError(
            f"MLflow run {run_id} (from {RUN_FILE}) cannot be reopened in {uri}: {error}. "
            "Re-run training with `dvc repro --force train`."
        ) from None


def write_run_file(run: mlflow.ActiveRun, *, model_uri: str) -> None:
    """The run and the model (models:/<model id>) the train stage logged, for the evaluate stage."""
    # No store path: this file is a versioned output and must not depend on where the repository lives.
    write_json(RUN_FILE, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "model_uri": model_uri})


def read_run_file() -> dict:
    try:
        record = json.loads(RUN_FILE.read_text(encoding="utf-8"))
        record["run_id"], record["model_uri"]  # noqa: B018 - both must be there
    except FileNotFoundError:
        raise PipelineError(f"{RUN_FILE} not found: {rerun_hint('train')}") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise PipelineError(
            f"{RUN_FILE} is not valid: expected JSON with run_id and model_uri; {repair_hint('train')}"
        ) from None
    return record


def client() -> MlflowClient:
    return MlflowClient(open_store())


def log_datasets(splits: dict[str, Split], *, dataset_name: str, source: str, context: str) -> None:
    """Log each non-empty split as an MLflow dataset input (MLflow computes its digest)."""
    # The source's kind named, not left to MLflow to guess: it registers its local-file source twice (for ""
    # and "file"), so a mirror's file:// URI would "be interpreted in multiple ways" in a warning on every run.
    kind = HTTPDatasetSource if source.startswith(("http://", "https://")) else LocalArtifactDatasetSource
    for name, split in splits.items():
        if not len(split.labels):
            continue
        dataset = mlflow.data.from_numpy(
            split.inputs, targets=split.labels, name=f"{dataset_name}-{name}", source=kind(source)
        )
        split_context = "validation" if name == "validation" else context
        try:
            mlflow.log_input(dataset, context=split_context)
        except MlflowException as error:
            # Runs starting together (`dvc queue start -j 4`) may all find the dataset new and insert it (SQLite's and
            # PostgreSQL's words for a second insert): on the second try only this run's link to it is added.
            if not any(text in str(error) for text in ("UNIQUE constraint failed", "duplicate key value")):
                raise
            mlflow.log_input(dataset, context=split_context)


def log_new_metrics(run_id: str, metrics: dict[str, float]) -> None:
    """Log each metric whose value differs from the run's latest: scoring the same model on the same data again
    (a re-run of the evaluate stage) adds no second, identical point to its history."""
    logged = client().get_run(run_id).data.metrics
    mlflow.log_metrics({name: value for name, value in metrics.items() if logged.get(name) != value})


def set_experiment_tag(experiment_id: str, tag: str, value: str, *, keep: bool = False) -> None:
    """Set an experiment tag once (`keep`: only where it has none): runs starting together would each insert it."""
    current = client().get_experiment(experiment_id).tags.get(tag)
    if current == value or (keep and current):
        return
    try:
        client().set_experiment_tag(experiment_id, tag, value)
    except MlflowException:
        # Another process's insert of the same row (a duplicate key) is no error; anything else is.
        if not client().get_experiment(experiment_id).tags.get(tag):
            raise


def run_exists(run_id: str | None) -> bool:
    """Whether the run a crashed training left can be continued."""
    if run_id is None:
        return False
    try:
        client().get_run(run_id)
    except MlflowException as error:
        logger.warning("starting a new MLflow run: run %s of the crashed training is gone (%s)", run_id, error)
        return False
    return True


def epoch_logger(run_id: str, *, checkpointed: dict[str, list[float]]) -> Callable[[int, dict], None]:
    """A Keras `on_epoch_end` hook logging each epoch's metrics with the epoch as step, once. After a
    crash, the epochs its process checkpointed but did not get to log are logged now; those it logged are not."""
    logged = {metric.step for metric in client().get_metric_history(run_id, "loss")}

    def log(epoch: int, logs: dict) -> None:
        if epoch + 1 not in logged:
            mlflow.log_metrics({name: float(value) for name, value in logs.items()}, step=epoch + 1)

    for epoch, values in enumerate(zip(*checkpointed.values(), strict=True)):
        log(epoch, dict(zip(checkpointed, values, strict=True)))
    return log


def experiment_link(base_url: str, experiment_id: str, view: str | None = None) -> str:
    """The MLflow UI's page of an experiment's runs, in its model-training view (MLflow 3 opens the GenAI view
    otherwise), showing the saved runs-table view `view` (a key of `save_runs_view`) when given."""
    shared = f"&viewStateShareKey={view}" if view else ""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning{shared}"


def save_runs_view(experiment_id: str, key: str, *, metrics: list[str], params: list[str]) -> None:
    """Save a view of the runs table that shows `metrics` and `params` as columns, best `metrics[0]` first.

    MLflow's URL carries the sort but not the columns; its "share" button saves the columns in an experiment tag
    `mlflow.sharedViewState.<key>` (plain JSON is read too), which a link opens with `viewStateShareKey=<key>`."""
    columns = [f"metrics.`{name}`" for name in metrics] + [f"params.`{name}`" for name in params]
    view = {"selectedColumns": columns, "orderByKey": columns[0], "orderByAsc": False}
    client().set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{key}", json.dumps(view))
