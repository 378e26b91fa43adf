"""Killed with SIGKILL mid-training, the train stage resumes from its last checkpoint in
the same MLflow run and ends with the weights of an uninterrupted run; a diverging
loss fails the run without registering a model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import BIN_DIRECTORY, make_tiny_project, run
from mlflow.tracking import MlflowClient

EPOCHS = 20
KILL_AT_EPOCH = 7


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_dataset_server):
    path = make_tiny_project(tmp_path_factory.mktemp("crash"), tiny_dataset_server, f"train.epochs={EPOCHS}")
    run(["dvc", "repro", "preprocess"], cwd=path)
    return path


def kill_train_at_epoch(path, epoch: int) -> None:
    environment = {**os.environ, "PATH": f"{BIN_DIRECTORY}{os.pathsep}{os.environ['PATH']}"}
    environment.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.train"],
        cwd=path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    for line in process.stdout:
        # Keras prints "Epoch N/EPOCHS" as epoch N begins: epoch N-1 is checkpointed by then.
        if line.startswith(f"Epoch {epoch + 1}/{EPOCHS}") or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_a_killed_training_resumes_in_the_same_run_with_identical_weights(project):
    path = project
    client = MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    uninterrupted = run([sys.executable, "-m", "pipeline.train", "--hash-only"], cwd=path).stdout.split()[-1]

    kill_train_at_epoch(path, KILL_AT_EPOCH)
    (killed,) = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    assert killed.info.status == "RUNNING"
    assert len(client.get_metric_history(killed.info.run_id, "loss")) >= KILL_AT_EPOCH

    result = run([sys.executable, "-m", "pipeline.train"], cwd=path)
    assert f"resuming after epoch {KILL_AT_EPOCH}" in result.stderr
    record = json.loads((path / "data/model/mlflow_run.json").read_text())
    assert record["run_id"] == killed.info.run_id, "the resumed training continues the crashed run"
    finished = client.get_run(killed.info.run_id)
    assert finished.data.tags["model.weights_sha256"] == uninterrupted
    assert finished.info.status == "FINISHED"
    steps = [metric.step for metric in client.get_metric_history(killed.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, EPOCHS + 1)), "every epoch's metrics once, none lost, none twice"
    assert not list((path / ".checkpoints").glob("train-*/checkpoint.npz")), "removed once the stage completed"
    # Training registers nothing, crashed or resumed: only the evaluate stage registers, once per run.
    assert not client.search_model_versions(f"run_id = '{killed.info.run_id}'")


@pytest.mark.slow
def test_a_diverging_loss_fails_the_run_and_registers_nothing(project):
    path = project
    client = MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    versions_before = len(client.search_model_versions())
    original = (path / "params.yaml").read_text()
    run(
        ["mlp", "params", "dataset=tiny_digits", "train.epochs=2", "optimizer=sgd", "optimizer.learning_rate=1e30"],
        cwd=path,
    )
    try:
        result = run([sys.executable, "-m", "pipeline.train"], cwd=path, check=False)
    finally:
        (path / "params.yaml").write_text(original)
    assert result.returncode == 1
    assert "training diverged: the loss became nan" in result.stderr
    assert "Traceback" not in result.stderr
    latest = client.search_runs([e.experiment_id for e in client.search_experiments()], order_by=["start_time DESC"])[0]
    assert latest.info.status == "FAILED"
    assert len(client.search_model_versions()) == versions_before
