"""The team server for real (make test-slow): `mlp server start` on free ports in a temporary state
folder, the tiny project's `dvc repro` logging to it over HTTP with a password, basic auth's
refusals, a crash and its restart, a backup restored into a deleted state folder, and the stop.

The tests share one server and one project and run in file order.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import NamedTuple

import mlflow
import numpy as np
import optuna
import psutil
import psycopg
import pytest
import requests
from conftest import REPOSITORY, TINY_DATASET, free_port, make_tiny_project, run
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client
from mlflow.tracking import MlflowClient

from pipeline import registry, tracking
from pipeline.errors import PipelineError

pytestmark = pytest.mark.slow

MODEL_NAME = f"{TINY_DATASET}-mlp"
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


class Server(NamedTuple):
    state: Path
    url: str
    port: int
    start_seconds: float


def mlp_server(state: Path, *arguments: str, check: bool = True):
    return run(["mlp", "server", *arguments, "--state-dir", str(state)], cwd=REPOSITORY, check=check)


def admin_password(server: Server) -> str:
    return (server.state / "admin_password").read_text().strip()


def runtime(server: Server) -> dict:
    return json.loads((server.state / "runtime.json").read_text())


def server_processes(server: Server) -> list[psutil.Process]:
    leader = psutil.Process(runtime(server)["mlflow_pid"])
    return [leader, *leader.children(recursive=True)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = tmp_path_factory.mktemp("server") / "state"
    port = free_port()
    began = time.monotonic()
    result = mlp_server(state, "start", "--port", str(port), "--workers", "1")
    elapsed = time.monotonic() - began
    print(f"\nmlp server start, first time: {elapsed:.1f} s")
    assert f"started at http://127.0.0.1:{port}" in result.stdout
    # The link to the pipeline experiment's runs, in the model-training view.
    assert re.search(
        rf"^runs of keras-mlp: http://127\.0\.0\.1:{port}/#/experiments/\d+/runs\?workflowType=machine_learning$",
        result.stdout,
        re.MULTILINE,
    ), result.stdout
    yield Server(state, f"http://127.0.0.1:{port}", port, elapsed)
    mlp_server(state, "stop")


@pytest.fixture
def as_admin(server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin_password(server))
    return MlflowClient(server.url)


@pytest.fixture(scope="module")
def project(server, tmp_path_factory, tiny_dataset_server):
    path = make_tiny_project(tmp_path_factory.mktemp("project"), tiny_dataset_server)
    environment = {
        "MLFLOW_TRACKING_URI": server.url,
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": admin_password(server),
    }
    result = run(["dvc", "repro"], cwd=path, **environment)
    return path, result


def test_start_listens_on_loopback_only_and_a_second_start_does_nothing(server):
    leader = psutil.Process(runtime(server)["mlflow_pid"])
    postgres_pid = int((server.state / "postgres/postmaster.pid").read_text().split()[0])
    processes = [*server_processes(server), psutil.Process(postgres_pid)]
    listening = {
        (connection.laddr.ip, connection.laddr.port)
        for process in processes
        for connection in process.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    }
    assert ("127.0.0.1", server.port) in listening
    assert {address for address, _ in listening} == {"127.0.0.1"}, listening
    began = time.monotonic()
    again = mlp_server(server.state, "start")
    assert "already running" in again.stdout and time.monotonic() - began < 15
    assert runtime(server)["mlflow_pid"] == leader.pid
    status = mlp_server(server.state, "status").stdout
    assert f"running, pid {leader.pid}, {server.url}" in status
    assert f"running, pid {postgres_pid}, 127.0.0.1:" in status


def test_the_search_role_reaches_its_own_database_only(server, monkeypatch):
    """What a search user gets (search.pgpass) opens the search database; the tracking and users databases
    refuse it, and no file a user gets holds the password of the role the MLflow server uses."""
    port = runtime(server)["postgres_port"]
    passfile = server.state / "search.pgpass"
    assert [line.split(":")[3] for line in passfile.read_text().splitlines()] == ["search"]
    for database in ("mlflow_auth", "mlflow"):
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(host="127.0.0.1", port=port, user="search", dbname=database, passfile=str(passfile))
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    study = optuna.create_study(storage=f"postgresql+psycopg://search@127.0.0.1:{port}/search", study_name="tiny")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "COMPLETE"]


def test_requests_without_or_with_a_wrong_password_are_refused(server):
    assert requests.get(server.url + SEARCH, timeout=30).status_code == 401
    assert requests.get(server.url + SEARCH, auth=("admin", "wrong-password-123"), timeout=30).status_code == 401
    assert requests.get(server.url + SEARCH, auth=("admin", admin_password(server)), timeout=30).status_code == 200


def test_dvc_repro_records_run_artifacts_and_model_on_the_server(server, project, as_admin):
    path, _ = project
    run_id = json.loads((path / "reports/metrics.json").read_text())["mlflow_run_id"]
    recorded = as_admin.get_run(run_id)
    assert recorded.info.status == "FINISHED"
    assert recorded.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert recorded.data.params["dataset.name"] == TINY_DATASET
    assert [point.step for point in as_admin.get_metric_history(run_id, "val_loss")] == [1]
    assert "test_accuracy" in recorded.data.metrics
    folders = ("", "config")  # the plots are at the root, for MLflow's compare page
    listed = {item.path for folder in folders for item in as_admin.list_artifacts(run_id, folder)}
    assert {"config/params.yaml", "confusion_matrix.png"} <= listed
    # Proxied by the server into its artifacts folder, not written by the client into its own.
    assert list(server.state.glob("artifacts/*/*/artifacts/config/params.yaml"))
    versions = as_admin.search_model_versions(f"name='{MODEL_NAME}'")
    assert [(version.version, version.run_id) for version in versions] == [("1", run_id)]


def test_credentials_appear_in_no_run_file_or_log(server, project, as_admin):
    path, result = project
    secrets = [admin_password(server), *json.loads((server.state / "secrets.json").read_text()).values()]
    run_id = json.loads((path / "reports/metrics.json").read_text())["mlflow_run_id"]
    recorded = as_admin.get_run(run_id)
    recorded_params = Path(download(server, f"{recorded.info.artifact_uri}/config/params.yaml")).read_text()
    texts = {
        "run tags and params": json.dumps([recorded.data.tags, recorded.data.params]),
        "params.yaml": (path / "params.yaml").read_text(),
        "the recorded params.yaml": recorded_params,
        "dvc repro's output": result.stdout + result.stderr,
        "mlflow.log": (server.state / "logs/mlflow.log").read_text(),
        "postgres.log": (server.state / "logs/postgres.log").read_text(),
        "the server's command lines": " ".join(" ".join(process.cmdline()) for process in server_processes(server)),
    }
    for secret in secrets:
        for where, text in texts.items():
            assert secret not in text, f"a generated secret appears in {where}"


def test_a_read_only_user_cannot_create_runs_and_the_admin_can(server, project, as_admin, monkeypatch):
    experiment = as_admin.get_experiment_by_name("keras-mlp")
    users = get_app_client("basic-auth", tracking_uri=server.url)
    users.create_user("reader", "reader-password-123")
    users.grant_user_permission("reader", "experiment", experiment.experiment_id, "READ")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "reader-password-123")
    reader = MlflowClient(server.url)
    assert reader.search_runs([experiment.experiment_id])
    with pytest.raises(MlflowException, match="Permission denied|PERMISSION_DENIED|403"):
        reader.create_run(experiment.experiment_id)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin_password(server))
    created = MlflowClient(server.url).create_run(experiment.experiment_id, run_name="by-admin")
    MlflowClient(server.url).set_terminated(created.info.run_id)


def test_the_pipeline_names_belong_to_the_admin_and_a_name_a_user_took_is_refused(server, project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "reader-password-123")
    reader = MlflowClient(server.url)
    # `mlp server start` created the names of conf/ as the admin before anyone could take them.
    with pytest.raises(MlflowException, match="already exists"):
        reader.create_experiment("atienza-table-1.3.2")
    with pytest.raises(MlflowException, match="already exists"):
        reader.create_registered_model("mnist-mlp")
    # A name that is not in conf/: the reader may create it, and manages it (MLflow's rule).
    reader.create_experiment("taken-by-reader")
    reader.create_registered_model("taken-by-reader-mlp")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    for username, password in (("reader", "reader-password-123"), ("admin", admin_password(server))):
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", username)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        with pytest.raises(PipelineError, match="experiment 'taken-by-reader' .* user 'reader'.* admin") as refused:
            tracking.experiment_id("taken-by-reader")
        assert "\n" not in str(refused.value)
        with pytest.raises(PipelineError, match="registered model 'taken-by-reader-mlp' .* user 'reader'"):
            registry.register(
                MlflowClient(server.url), "taken-by-reader-mlp", run_id="0" * 32, model_uri="models:/m-0",
                description="", tags={},
            )  # fmt: skip
    assert not MlflowClient(server.url).search_model_versions("name = 'taken-by-reader-mlp'")


def test_start_restarts_a_crashed_server_and_database(server, project, as_admin):
    killed, postgres_port = runtime(server)["mlflow_pid"], runtime(server)["postgres_port"]
    postmaster = psutil.Process(int((server.state / "postgres/postmaster.pid").read_text().split()[0]))
    # The server with its workers and the database, as an out-of-memory kill would end them.
    os.killpg(killed, signal.SIGKILL)
    postmaster.kill()
    psutil.wait_procs([psutil.Process(killed), postmaster], timeout=30)
    status = mlp_server(server.state, "status", check=False)
    assert status.returncode == 3
    assert "CRASHED" in status.stdout and "postgresql  stopped" in status.stdout
    mlp_server(server.state, "start")
    assert runtime(server)["mlflow_pid"] != killed
    # The same addresses: a search's --storage URL stays valid.
    assert (runtime(server)["postgres_port"], runtime(server)["url"]) == (postgres_port, server.url)
    assert "running" in mlp_server(server.state, "status").stdout
    assert as_admin.search_model_versions(f"name='{MODEL_NAME}'")


def everything(client: MlflowClient) -> dict:
    """Every experiment, run (params, tags, every metric point, every artifact) and model version."""
    experiments = client.search_experiments()
    runs = client.search_runs([experiment.experiment_id for experiment in experiments], max_results=1000)
    content = {}
    for recorded in runs:
        run_id = recorded.info.run_id
        history = {
            key: [(point.step, point.value, point.timestamp) for point in client.get_metric_history(run_id, key)]
            for key in recorded.data.metrics
        }
        data = recorded.data
        content[run_id] = (recorded.info.status, data.params, data.tags, history, artifacts(client, run_id))
    versions = {(v.name, v.version): (v.run_id, v.source, v.status) for v in client.search_model_versions()}
    return {"experiments": sorted(e.name for e in experiments), "runs": content, "model versions": versions}


def artifacts(client: MlflowClient, run_id: str, folder: str | None = None) -> list[tuple[str, int | None]]:
    found = []
    for item in client.list_artifacts(run_id, folder):
        found += artifacts(client, run_id, item.path) if item.is_dir else [(item.path, item.file_size)]
    return found


def download(server: Server, artifact_uri: str) -> str:
    # The server's URL given each time: mlflow.set_tracking_uri would stay set for the tests after these.
    return mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, tracking_uri=server.url)


def predictions(server: Server, client: MlflowClient, test_inputs: np.ndarray) -> np.ndarray:
    """Every class's probability per input, from the registered model."""
    model = mlflow.pyfunc.load_model(download(server, client.get_model_version_download_uri(MODEL_NAME, "1")))
    return np.array([list(row.values()) for row in model.predict(test_inputs)["probabilities"]])


def test_backup_restored_into_a_deleted_state_folder_brings_everything_back(
    server, project, as_admin, tmp_path, monkeypatch
):
    path, _ = project
    with np.load(path / f"data/processed/{TINY_DATASET}/test.npz") as arrays:
        test_inputs = arrays["inputs"][:5]
    before, predicted = everything(as_admin), predictions(server, as_admin, test_inputs)
    postgres_port = runtime(server)["postgres_port"]
    # A study in the search database, as a search user makes it: with the search role's password file.
    search_storage = f"postgresql+psycopg://search@127.0.0.1:{postgres_port}/search"
    monkeypatch.setenv("PGPASSFILE", str(server.state / "search.pgpass"))
    study = optuna.create_study(storage=search_storage, study_name="backed-up")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    study_before = [(trial.number, trial.state, trial.params, trial.value) for trial in study.trials]
    backed_up = mlp_server(server.state, "backup", "--output", str(tmp_path / "backup.tar.gz")).stdout
    print("\n" + backed_up.strip())
    assert (tmp_path / "backup.tar.gz").stat().st_mode & 0o077 == 0
    mlp_server(server.state, "stop")
    shutil.rmtree(server.state)  # the database, the artifacts, and the passwords
    began = time.monotonic()
    restored = mlp_server(server.state, "restore", str(tmp_path / "backup.tar.gz")).stdout
    print(f"{restored.strip()} in {time.monotonic() - began:.1f} s")
    assert restored.split(":", 1)[1] == backed_up.split(":", 1)[1]
    # The settings came back with the archive: the same ports, without giving them again.
    mlp_server(server.state, "start")
    assert (runtime(server)["postgres_port"], runtime(server)["url"]) == (postgres_port, server.url)
    # A new admin password was generated; the restored users keep theirs.
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin_password(server))
    assert everything(as_admin) == before
    np.testing.assert_array_equal(predictions(server, as_admin, test_inputs), predicted)
    # The study is back, readable and writable by the search role with this state folder's password file.
    restored_study = optuna.load_study(storage=search_storage, study_name="backed-up")
    assert [(trial.number, trial.state, trial.params, trial.value) for trial in restored_study.trials] == study_before
    restored_study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    reader = requests.get(server.url + SEARCH, auth=("reader", "reader-password-123"), timeout=30)
    assert reader.status_code == 200


def test_stop_ends_every_process_and_frees_the_port(server):
    family = server_processes(server)
    postmaster = psutil.Process(int((server.state / "postgres/postmaster.pid").read_text().split()[0]))
    assert "stopped: MLflow server" in mlp_server(server.state, "stop").stdout
    _, alive = psutil.wait_procs([*family, postmaster], timeout=10)
    assert not alive
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT connections may remain
        probe.bind(("127.0.0.1", server.port))
    assert mlp_server(server.state, "status", check=False).returncode == 3
