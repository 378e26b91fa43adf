"""MLflow runs end FINISHED, FAILED or KILLED, never RUNNING; the store follows DVC_ROOT."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import REPOSITORY
from mlflow.tracking import MlflowClient

from pipeline import tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    yield MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; monkeypatch restores it.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_run_ends_finished_and_artifacts_sit_beside_the_store(store, tmp_path):
    with tracking.pipeline_run(experiment_name="test") as run:
        pass
    finished = store.get_run(run.info.run_id)
    assert finished.info.status == "FINISHED"
    assert finished.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_exception_marks_failed_and_interrupt_marks_killed(store):
    with pytest.raises(ValueError), tracking.pipeline_run(experiment_name="test") as failed:
        raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt), tracking.pipeline_run(experiment_name="test") as killed:
        raise KeyboardInterrupt
    assert store.get_run(failed.info.run_id).info.status == "FAILED"
    assert store.get_run(killed.info.run_id).info.status == "KILLED"


def test_reopened_run_keeps_its_id(store):
    with tracking.pipeline_run(experiment_name="test") as run:
        pass
    with tracking.pipeline_run(run_id=run.info.run_id) as reopened:
        assert reopened.info.run_id == run.info.run_id
    assert store.get_run(run.info.run_id).info.status == "FINISHED"


def test_store_follows_dvc_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "original"))
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'original' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    ("sent", "inherited_sigint"),
    [(signal.SIGTERM, signal.SIG_DFL), (signal.SIGINT, signal.SIG_DFL), (signal.SIGINT, signal.SIG_IGN)],
    ids=["sigterm", "sigint", "sigint-after-background-start"],
)
def test_a_stopped_stage_marks_its_run_killed(tmp_path, sent, inherited_sigint):
    """SIGTERM (timeouts, `dvc exp remove`) and SIGINT (Ctrl+C, `dvc queue kill`) stop a stage with status
    130 and its MLflow run KILLED, also when started from a script's background job, which ignores SIGINT."""
    script = (
        "import time\n"
        "from pipeline.errors import run_stage\n"
        "from pipeline.tracking import pipeline_run\n"
        "def main():\n"
        "    with pipeline_run(experiment_name='test') as run:\n"
        "        print(run.info.run_id, flush=True)\n"
        "        time.sleep(60)\n"
        "run_stage(main)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(REPOSITORY), "PATH": "/usr/bin:/bin"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, inherited_sigint),
    )
    run_id = process.stdout.readline().strip()
    time.sleep(0.5)
    process.send_signal(sent)
    assert process.wait(timeout=60) == 130
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id).info.status == "KILLED"
