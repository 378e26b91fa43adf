"""Team scale for real (make test-slow): machine A runs eight queued experiments (`dvc queue start
-j 2`) on a store that does not exist yet and pushes to the DVC remote; machine B, a second clone in
another folder with its own DVC cache, a user's password for `mlp server` and the shared remote,
pulls, runs eight queued experiments on the server and pushes; machine C, a fresh clone, runs `mlp
reproduce` of one of B's runs while the dataset's URL is down, the data coming from the remote.

One server is started for the module; the tests run in file order, each machine after the last.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml
from conftest import (
    REPOSITORY,
    TINY_DATASET,
    QuietHandler,
    ServedDataset,
    free_port,
    make_tiny_project,
    run,
    start_queue_and_wait,
)
from mlflow.server import get_app_client
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

MODEL_NAME = f"{TINY_DATASET}-mlp"
EPOCHS = 2
# One value per queued experiment, so that the eight are distinct. Dropout is read by train
# only: the data stages' outputs, committed in dvc.lock, are shared by all eight. B's differ
# from A's, whose applied experiment B's clone starts from: each of B's eight must train.
DROPOUT_RATES_A = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]
DROPOUT_RATES_B = [0.42, 0.44, 0.46, 0.48, 0.5, 0.52, 0.54, 0.56]
# -S composes conf/ afresh: the tiny dataset and the epochs are given again with each.
TINY = ["-S", f"dataset={TINY_DATASET}", "-S", f"train.epochs={EPOCHS}"]
GIT = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com"]
TEAMMATE = ("teammate", "teammate-password-123")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlp server start` in a temporary state folder: (url, admin credentials as environment)."""
    state = tmp_path_factory.mktemp("server") / "state"
    port = free_port()
    began = time.monotonic()
    # Two MLflow workers for two cores, as many as the queue's workers.
    run(["mlp", "server", "start", "--port", str(port), "--workers", "2", "--state-dir", str(state)], cwd=REPOSITORY)
    print(f"\nmlp server start, first time: {time.monotonic() - began:.1f} s")
    admin = {
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": (state / "admin_password").read_text().strip(),
    }
    yield f"http://127.0.0.1:{port}", admin, state
    run(["mlp", "server", "stop", "--state-dir", str(state)], cwd=REPOSITORY)


@pytest.fixture
def admin_client(server, monkeypatch):
    url, admin, _ = server
    for variable, value in admin.items():
        monkeypatch.setenv(variable, value)
    return MlflowClient(url)


@pytest.fixture(scope="module")
def stoppable_dataset(tiny_dataset_server):
    """The tiny dataset served from a URL of its own, which a test can take down: (dataset, stop)."""
    handler = lambda *args, **kwargs: QuietHandler(*args, directory=str(tiny_dataset_server.root), **kwargs)  # noqa: E731
    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{http_server.server_port}/{TINY_DATASET}/"

    def stop() -> None:
        http_server.shutdown()
        http_server.server_close()

    yield tiny_dataset_server._replace(base_url=base_url), stop
    stop()


def project_with_data(destination: Path, served: ServedDataset) -> Path:
    """The tiny project trained for EPOCHS epochs, its data stages run and committed with dvc.lock."""
    path = make_tiny_project(destination, served, f"train.epochs={EPOCHS}")
    run(["dvc", "repro", "preprocess"], cwd=path)  # no training yet: no MLflow store either
    run(["git", "add", "-A"], cwd=path)
    run([*GIT, "commit", "-qm", "data stages"], cwd=path)
    return path


def run_queue(path: Path, rates: list[float], **environment: str) -> tuple[str, dict[str, str]]:
    """Queue one experiment per dropout rate, run them with two workers, wait; (final status, logs by name)."""
    sweep = ",".join(str(rate) for rate in rates)  # Hydra's sweep syntax: one experiment per value
    run(["dvc", "exp", "run", "--queue", *TINY, "-S", f"model.dropout_rate={sweep}"], cwd=path)
    began = time.monotonic()
    status, started = start_queue_and_wait(path, "-j", "2", **environment)
    print(f"\n{len(rates)} experiments, dvc queue start -j 2: {time.monotonic() - began:.1f} s")
    names = [line.split()[1] for line in status.splitlines()[1:] if len(line.split()) == 5]
    assert len(names) == len(rates), status
    logs = {name: run(["dvc", "queue", "logs", name], cwd=path, check=False).stdout for name in names}
    logs["dvc queue start"] = started
    return status, logs


def first_success(status: str) -> str:
    """The name of the first experiment `dvc queue status` lists as succeeded."""
    return next(line.split()[1] for line in status.splitlines() if line.rstrip().endswith("Success"))


def check_eight_runs(client: MlflowClient, rates: list[float], status: str, logs: dict[str, str]) -> list:
    """8 of 8 ran every stage, 8 FINISHED runs with every epoch of every per-epoch metric, 8 model versions."""
    for line in status.splitlines():
        if line.rstrip().endswith("Failed"):
            # DVC's queue can fail to collect an experiment whose stages all ran: its experiment lock
            # refuses at once when two workers finish together. The pipeline's part must be complete.
            name = line.split()[1]
            assert logs[name].rstrip().endswith("Updating lock file 'dvc.lock'"), f"{name}: {logs[name][-3000:]}"
            print(f"\nDVC's queue did not collect {name} after all its stages ran")
    assert status.count("Success") + status.count("Failed") == len(rates), status
    assert status.count("Success") >= 1, status
    for name, text in logs.items():
        assert "database is locked" not in text, f"{name}: {text[-3000:]}"
    runs = client.search_runs([client.get_experiment_by_name("keras-mlp").experiment_id])
    assert len(runs) == len(rates)
    assert {recorded.info.status for recorded in runs} == {"FINISHED"}
    assert sorted(float(recorded.data.params["model.dropout_rate"]) for recorded in runs) == rates
    for recorded in runs:
        per_epoch = [name for name in recorded.data.metrics if not name.startswith("test_")]
        assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(per_epoch)
        for name in per_epoch:
            steps = [point.step for point in client.get_metric_history(recorded.info.run_id, name)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (recorded.info.run_id, name, steps)
        assert "test_accuracy" in recorded.data.metrics
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert sorted(int(version.version) for version in versions) == list(range(1, len(rates) + 1))
    assert {version.run_id for version in versions} == {recorded.info.run_id for recorded in runs}
    return runs


@pytest.fixture(scope="module")
def machine_a(tmp_path_factory, stoppable_dataset):
    """The queue on a project without a server, whose MLflow store does not exist yet."""
    path = project_with_data(tmp_path_factory.mktemp("machine-a") / "project", stoppable_dataset[0])
    assert not (path / "mlflow.db").exists()
    status, logs = run_queue(path, DROPOUT_RATES_A)
    return path, status, logs


def test_eight_queued_experiments_on_a_missing_sqlite_store(machine_a):
    path, status, logs = machine_a
    runs = check_eight_runs(MlflowClient(f"sqlite:///{path / 'mlflow.db'}"), DROPOUT_RATES_A, status, logs)
    # The first workers were the store's first users at once: runs started before the first one ended.
    first_end = min(recorded.info.end_time for recorded in runs)
    concurrent = sum(recorded.info.start_time < first_end for recorded in runs)
    print(f"runs started on the new store before the first one ended: {concurrent}")
    assert concurrent >= 2


@pytest.fixture(scope="module")
def shared_project(machine_a):
    """A's project with one of its experiments applied and committed, everything pushed to the DVC
    remote beside it; (project, remote folder)."""
    path, status, _ = machine_a
    run(["dvc", "exp", "apply", first_success(status)], cwd=path)
    run(["git", "add", "-A"], cwd=path)
    run([*GIT, "commit", "-qm", "an experiment's results"], cwd=path)
    run(["dvc", "push"], cwd=path)
    return path, path.parent / "keras-mlp-dvc-storage"


def joined_clone(shared_project: tuple[Path, Path], destination: Path) -> Path:
    """What another machine does to join: git clone, the shared DVC remote's location as its own."""
    project, storage = shared_project
    run(["git", "clone", "-q", str(project), str(destination)], cwd=destination.parent)
    run(["dvc", "remote", "modify", "--local", "local", "url", str(storage)], cwd=destination)
    return destination


@pytest.fixture(scope="module")
def teammate(server):
    """A user of the server with EDIT on the experiment and the registered model, as the admin grants it."""
    url, admin, _ = server
    with pytest.MonkeyPatch.context() as patch:
        for variable, value in admin.items():
            patch.setenv(variable, value)
        users = get_app_client("basic-auth", tracking_uri=url)
        users.create_user(*TEAMMATE)
        client = MlflowClient(url)
        # `mlp server start` created the experiment of conf/; the tiny dataset's model name is not in it.
        experiment_id = client.get_experiment_by_name("keras-mlp").experiment_id
        client.create_registered_model(MODEL_NAME)
        users.grant_user_permission(TEAMMATE[0], "experiment", experiment_id, "EDIT")
        users.grant_user_permission(TEAMMATE[0], "registered_model", MODEL_NAME, "EDIT")
    username, password = TEAMMATE
    return {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}


@pytest.fixture(scope="module")
def machine_b(server, shared_project, teammate, tmp_path_factory):
    """A clone in another folder with its own DVC cache: dvc pull, the queue on the server as the
    teammate, one experiment applied, dvc push; (clone, pull's output, queue status, logs, applied run id)."""
    clone = joined_clone(shared_project, tmp_path_factory.mktemp("machine-b") / "project")
    assert Path(run(["dvc", "cache", "dir"], cwd=clone).stdout.strip()) == clone / ".dvc/cache"
    pulled = run(["dvc", "pull"], cwd=clone).stdout
    # The queue's workers inherit the environment of `dvc queue start`.
    status, logs = run_queue(clone, DROPOUT_RATES_B, **teammate)
    run(["dvc", "exp", "apply", first_success(status)], cwd=clone)
    run(["dvc", "push"], cwd=clone)
    run_id = json.loads((clone / "reports/metrics.json").read_text())["mlflow_run_id"]
    return clone, pulled, status, logs, run_id


def test_eight_queued_experiments_on_the_server(server, machine_b, admin_client):
    _, _, state = server
    clone, _, status, logs, _ = machine_b
    logs["mlflow.log"] = (state / "logs/mlflow.log").read_text()
    check_eight_runs(admin_client, DROPOUT_RATES_B, status, logs)
    assert not (clone / "mlflow.db").exists()


def test_the_second_machine_pulls_runs_on_the_server_and_pushes_to_the_remote(shared_project, machine_b, admin_client):
    clone, pulled, status, _, run_id = machine_b
    _, storage = shared_project
    assert "fetched" in pulled and (clone / "data/model/model.keras").exists()
    # The applied experiment's run, on the server.
    recorded = admin_client.get_run(run_id)
    assert recorded.info.status == "FINISHED" and recorded.data.tags["dvc.experiment_name"] == first_success(status)
    assert float(recorded.data.params["model.dropout_rate"]) in DROPOUT_RATES_B
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    model = next(item for item in lock["train"]["outs"] if item["path"] == "data/model")
    assert (storage / "files/md5" / model["md5"][:2] / model["md5"][2:]).is_file()
    assert "Cache and remote 'local' are in sync" in run(["dvc", "status", "-c"], cwd=clone).stdout


def test_reproduce_takes_the_data_from_the_remote_while_the_dataset_url_is_down(
    shared_project, machine_b, stoppable_dataset, teammate, tmp_path_factory
):
    run_id = machine_b[-1]
    dataset, stop = stoppable_dataset
    stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(dataset.base_url, timeout=5)
    # A third machine: a fresh clone, an empty DVC cache, and the run's record on the server.
    clone = joined_clone(shared_project, tmp_path_factory.mktemp("machine-c") / "project")
    assert not (clone / ".dvc/cache").exists()
    began = time.monotonic()
    result = run(["mlp", "reproduce", run_id], cwd=clone, check=False, **teammate)
    print(f"\nmlp reproduce from the remote: {time.monotonic() - began:.1f} s")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    pulled = [line for line in result.stderr.splitlines() if "pulled from DVC (" in line]
    assert pulled and "fetched" in pulled[0], result.stderr
    print(pulled[0])
    assert "download and preprocess are not run again" in result.stderr
    assert "Running stage 'download'" not in output and "Running stage 'preprocess'" not in output
    assert "Running stage 'train'" in output and "verdict: identical" in output
