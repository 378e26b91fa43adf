"""Slower end-to-end checks (make test-slow): a queued sweep and a --temp run
landing in the repository's MLflow store, the registered model served over
HTTP, and the real MNIST files through a local mirror."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import yaml
from conftest import BIN_DIRECTORY, TINY_DATASET, copy_repository, make_tiny_project, run, start_queue_and_wait
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

TINY = [f"dataset={TINY_DATASET}", "train.epochs=1"]


def test_queued_sweep_and_temp_run_land_in_the_repository_store(tmp_path, tiny_dataset_server):
    path = make_tiny_project(tmp_path / "project", tiny_dataset_server)
    run(
        ["dvc", "exp", "run", "--queue", *(f"-S{override}" for override in TINY), "-Smodel.dropout_rate=0.1,0.2"],
        cwd=path,
    )
    status, _ = start_queue_and_wait(path, timeout=900)
    assert "Failed" not in status, status
    run(["dvc", "exp", "run", "--temp", "-n", "temporary", *(f"-S{override}" for override in TINY)], cwd=path)

    client = MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("keras-mlp").experiment_id])
    by_dropout = {mlflow_run.data.params["model.dropout_rate"]: mlflow_run for mlflow_run in runs}
    assert set(by_dropout) == {"0.1", "0.2", "0.45"}
    for mlflow_run in runs:
        assert mlflow_run.info.status == "FINISHED"
        assert "test_accuracy" in mlflow_run.data.metrics
        assert mlflow_run.data.tags["dvc.experiment_name"]
        assert mlflow_run.info.artifact_uri.startswith((path / "mlartifacts").as_uri())
    assert by_dropout["0.45"].data.tags["dvc.experiment_name"] == "temporary"
    # Nothing was written into the temporary copies' own folders.
    assert not list(path.glob(".dvc/tmp/exps/**/mlflow.db"))

    shown = json.loads(run(["dvc", "exp", "show", "--json"], cwd=path).stdout)
    listed = {
        experiment["revs"][0]["data"]["metrics"]["reports/metrics.json"]["data"]["mlflow_run_id"]
        for baseline in shown
        for experiment in (baseline.get("experiments") or [])
    }
    assert listed == {mlflow_run.info.run_id for mlflow_run in runs}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset_server):
    """A tiny project after `dvc repro`: (its path, 5 raw test rows, their labels, evaluate's classes for them)."""
    path = make_tiny_project(tmp_path_factory.mktemp("served") / "project", tiny_dataset_server)
    run(["dvc", "repro"], cwd=path)
    with np.load(path / f"data/processed/{TINY_DATASET}/test.npz") as arrays:
        inputs, labels = arrays["inputs"][:5], arrays["labels"][:5]
    with (path / "reports/confusion_matrix.csv").open() as stream:
        evaluated = [row["predicted"] for row in csv.DictReader(stream)][:5]
    return path, inputs, labels, evaluated


def start_server(path, command: list[str]) -> tuple[subprocess.Popen, str]:
    """`command` serving on a free port of 127.0.0.1 in project `path`, once it answers /ping: (process, URL)."""
    port = free_port()
    environment = {
        **os.environ,
        "PATH": f"{BIN_DIRECTORY}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{path / 'mlflow.db'}",
    }
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        cwd=path,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return server, f"http://127.0.0.1:{port}"
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop(server)
                raise AssertionError(f"server did not start: {server.stderr.read().decode()}") from None
            time.sleep(1)


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, 15)
    server.wait(timeout=30)


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def check_answers(body: str, labels: np.ndarray, evaluated: list[str]) -> None:
    answers = json.loads(body)["predictions"]
    # A row per input: its class name, that class's probability, and every class's.
    assert [set(answer) for answer in answers] == [{"class", "probability", "probabilities"}] * 5
    for answer in answers:
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert answer["probabilities"][answer["class"]] == answer["probability"]
    classes = [answer["class"] for answer in answers]
    # The tiny dataset is learnable: the served model gets most of these right.
    assert np.mean([name == str(label) for name, label in zip(classes, labels, strict=True)]) >= 0.6
    # The served model is the evaluated one: the same class as the evaluate stage's for every row.
    assert classes == evaluated


def test_registered_model_is_served_by_mlflow_models_serve(trained):
    path, inputs, labels, evaluated = trained
    command = ["mlflow", "models", "serve", "-m", f"models:/{TINY_DATASET}-mlp/1", "--env-manager", "local"]
    server, url = start_server(path, command)
    try:
        # Raw pixels, as a client has them: the served model scales them itself.
        assert inputs.dtype == np.uint8 and inputs.max() > 1
        status, body = post(url, json.dumps({"inputs": inputs.tolist()}).encode())
        assert status == 200
        check_answers(body, labels, evaluated)
    finally:
        stop(server)


def test_mlp_serve_answers_the_champion_and_refuses_bad_requests_in_one_line(trained):
    path, inputs, labels, evaluated = trained
    server, url = start_server(path, ["mlp", "serve"])  # params.yaml's registered model, its champion
    try:
        status, body = post(url, json.dumps({"inputs": inputs.tolist()}).encode())
        assert status == 200
        check_answers(body, labels, evaluated)
        wanted = 'Send JSON {"inputs": [rows of 784 uint8 values]}.'
        refused = {
            "a row too short": post(url, json.dumps({"inputs": [[0] * 783]}).encode()),
            "a pixel above 255": post(url, json.dumps({"inputs": [[0] * 783 + [400]]}).encode()),
            "not JSON": post(url, b"{inputs"),
            "CSV": post(url, b"a,b\n1,2\n", "text/csv"),
        }
        for case, (status, body) in refused.items():
            print(f"{case}: HTTP {status} {body}")
            error = json.loads(body)
            assert status in (400, 415) and set(error) == {"error_code", "message"}, case
            # One line, the reason and what to send; no traceback, no echo of the input.
            assert "\n" not in error["message"] and "[[" not in error["message"], case
            assert error["message"].endswith(wanted), case
        assert refused["a row too short"][1].count("(1, 783) does not match expected shape (-1, 784)") == 1
        assert "400 out of bounds for uint8" in refused["a pixel above 255"][1]
        assert refused["CSV"][0] == 415
    finally:
        stop(server)


@pytest.mark.skipif(not os.environ.get("MLP_DATA_MIRROR"), reason="set MLP_DATA_MIRROR to a folder holding mnist/")
def test_real_mnist_through_the_mirror(tmp_path):
    path = copy_repository(tmp_path / "project")
    run(["mlp", "params", "experiment=smoke"], cwd=path)
    run(["git", "init", "-q"], cwd=path)
    result = run(["dvc", "repro"], cwd=path, MLP_DATA_MIRROR=os.environ["MLP_DATA_MIRROR"])
    assert "downloading from mirror" in result.stderr
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        assert f"data/raw/mnist/{name} downloaded from file://" in result.stderr
    counts = json.loads((path / "reports/class_counts.json").read_text())
    assert sum(counts["train"].values()) + sum(counts["validation"].values()) == 1000
    assert sum(counts["test"].values()) == 500
    # One epoch on 900 real digits already gets well above chance (10%).
    metrics = json.loads((path / "reports/metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.5
    tags = MlflowClient(f"sqlite:///{path / 'mlflow.db'}").get_run(metrics["mlflow_run_id"]).data.tags
    assert (tags["dataset"], tags["config.overrides"]) == ("mnist", "experiment=smoke")
    # The one data digest, from the sha256s conf/dataset/mnist.yaml pins.
    pins = yaml.safe_load((path / "conf/dataset/mnist.yaml").read_text())["files"].values()
    listing = "".join(f"{pin['sha256']}  {pin['name']}\n" for pin in sorted(pins, key=lambda pin: pin["name"]))
    assert tags["data.sha256"] == hashlib.sha256(listing.encode()).hexdigest()


@pytest.mark.skipif(not os.environ.get("MLP_DATA_MIRROR"), reason="set MLP_DATA_MIRROR to a folder holding pima/")
def test_real_pima_table_through_the_mirror(tmp_path):
    path = copy_repository(tmp_path / "project")
    run(["git", "init", "-q"], cwd=path)
    run(["git", "add", "-A"], cwd=path)
    run(["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", "commit", "-qm", "copy"], cwd=path)
    run(["dvc", "exp", "run", "-S", "dataset=pima"], cwd=path, MLP_DATA_MIRROR=os.environ["MLP_DATA_MIRROR"])
    counts = json.loads((path / "reports/class_counts.json").read_text())
    assert {name: sum(split.values()) for name, split in counts.items()} == {
        "train": 552,
        "validation": 62,
        "test": 154,
    }
    assert sum(split["1"] for split in counts.values()) == 268
    # The raw measurements (plasma glucose in mg/dl): the model standardizes them in its first layer.
    with np.load(path / "data/processed/pima/train.npz") as arrays:
        assert arrays["inputs"].dtype == np.float32 and arrays["inputs"][:, 1].max() > 100
    metrics = json.loads((path / "reports/metrics.json").read_text())
    # Well above the 65% of always answering "no diabetes".
    assert metrics["test"]["accuracy"] > 0.7
    recorded = MlflowClient(f"sqlite:///{path / 'mlflow.db'}").get_run(metrics["mlflow_run_id"]).data
    # The standardization's mean, variance (8 each) and count are the model's weights too.
    assert recorded.params["model.parameter_count"] == str(8 + 8 + 1 + 8 * 256 + 256 + 256 * 256 + 256 + 256 + 1)
    assert recorded.tags["config.overrides"] == "dataset=pima"
