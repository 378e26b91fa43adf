"""MLflow runs end FINISHED, FAILED or KILLED, never RUNNING; the store follows DVC_ROOT; concurrent
first users create one sound store; a run whose process was killed is ended FAILED by the next one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from conftest import REPOSITORY
from mlflow.tracking import MlflowClient

from pipeline import run_owner, tracking
from pipeline.errors import ConfigError
from pipeline.splits import Split

# A bare environment for stage-like subprocesses: no MLFLOW_TRACKING_URI, no DVC_ROOT.
SUBPROCESS_ENVIRONMENT = {"PYTHONPATH": str(REPOSITORY), "PATH": "/usr/bin:/bin"}


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
        raise ValueError("boom\n  on two lines")
    with pytest.raises(KeyboardInterrupt), tracking.pipeline_run(experiment_name="test") as killed:
        raise KeyboardInterrupt
    ended = store.get_run(failed.info.run_id)
    assert ended.info.status == "FAILED"
    assert ended.data.tags["failure.reason"] == "ValueError: boom on two lines"
    assert store.get_run(killed.info.run_id).info.status == "KILLED"


def test_a_failure_reason_never_carries_a_login():
    error = OSError("cannot reach https://alice:s3cret@mirror.example/mnist/ nor postgresql://bob:pw@db/mlflow")
    reason = tracking.failure_reason(error)
    assert reason == "OSError: cannot reach https://mirror.example/mnist/ nor postgresql://db/mlflow"


def test_the_same_metrics_logged_again_add_no_point(store):
    with tracking.pipeline_run(experiment_name="test") as run:
        tracking.log_new_metrics(run.info.run_id, {"test_accuracy": 0.5, "test_loss": 1.25})
    for accuracy in (0.5, 0.75):  # evaluate run again: the same score, then another (a changed test set)
        with tracking.pipeline_run(run_id=run.info.run_id):
            tracking.log_new_metrics(run.info.run_id, {"test_accuracy": accuracy, "test_loss": 1.25})
    history = store.get_metric_history(run.info.run_id, "test_accuracy")
    assert [point.value for point in history] == [0.5, 0.75]
    assert len(store.get_metric_history(run.info.run_id, "test_loss")) == 1


def test_a_mirror_folder_is_logged_as_a_local_dataset_source_without_a_warning(store, tmp_path):
    split = Split(np.zeros((4, 3), np.uint8), np.arange(4) % 2)
    with warnings.catch_warnings(), tracking.pipeline_run(experiment_name="test") as run:
        warnings.simplefilter("error")  # MLflow's "can be interpreted in multiple ways" among them
        sources = {"mirrored": tmp_path.as_uri() + "/", "public": "https://mirror.example/digits/"}
        for name, source in sources.items():
            tracking.log_datasets({"train": split}, dataset_name=name, source=source, context="training")
    inputs = {item.dataset.name: item.dataset for item in store.get_run(run.info.run_id).inputs.dataset_inputs}
    assert inputs["mirrored-train"].source_type == "local"
    assert json.loads(inputs["mirrored-train"].source) == {"uri": sources["mirrored"]}
    assert inputs["public-train"].source_type == "http"


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
        "from pipeline.stage import run_stage\n"
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


def test_a_stage_interrupted_while_tensorflow_traces_marks_its_run_killed(tmp_path):
    """A SIGINT that lands while TensorFlow traces a function comes out of Keras as another error (SystemError or
    ValueError, seen in model.evaluate); Ctrl+C in a terminal, then `mlp study`, send a second SIGINT while the
    stage ends, which must not cut its cleanup short. The run still ends KILLED, and the stage exits 130."""
    script = (
        "import os, signal\n"
        "from pathlib import Path\n"
        "from pipeline.stage import run_stage\n"
        "from pipeline.tracking import pipeline_run\n"
        "def main():\n"
        "    with pipeline_run(experiment_name='test') as run:\n"
        "        print(run.info.run_id, flush=True)\n"
        "        try:\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "        except KeyboardInterrupt:\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "            Path('cleaned-up').touch()\n"
        "            raise SystemError('error return without exception set')\n"
        "run_stage(main)\n"
    )
    process = start_script(script, tmp_path)
    run_id = process.stdout.readline().strip()
    output = "".join(process.communicate(timeout=60))
    assert process.returncode == 130, output
    assert "interrupted" in output and "Traceback" not in output, output
    assert (tmp_path / "cleaned-up").exists(), "the second SIGINT cut the cleanup short"
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id).info.status == "KILLED"


def start_script(script: str, cwd, **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=SUBPROCESS_ENVIRONMENT,
        **options,
    )


@pytest.mark.slow  # tens of seconds: runs in make test-slow
def test_concurrent_first_users_create_one_sound_store(tmp_path):
    """Eight processes open the missing store at the same moment (they wait for a start file after their
    imports): every one creates its run, and the store holds all eight afterwards."""
    count = 8
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from pipeline.tracking import pipeline_run\n"
        "Path(f'ready-{sys.argv[1]}').touch()\n"
        "while not Path('go').exists():\n"
        "    time.sleep(0.005)\n"
        "with pipeline_run(experiment_name='concurrent') as run:\n"
        "    print(run.info.run_id, flush=True)\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(number)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=SUBPROCESS_ENVIRONMENT,
        )
        for number in range(count)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    results = [(process.wait(timeout=120), *process.communicate()) for process in processes]
    failures = [stderr for status, _, stderr in results if status != 0]
    assert not failures, f"{len(failures)} of {count} failed; the first: {failures[0][-2000:]}"
    run_ids = {stdout.strip() for _, stdout, _ in results}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([experiment.experiment_id])
    assert {run.info.run_id for run in runs} == run_ids
    assert len(run_ids) == count
    assert {run.info.status for run in runs} == {"FINISHED"}


def test_each_run_records_its_owner_process_in_one_tag(store):
    with tracking.pipeline_run(experiment_name="test") as run:
        tags = store.get_run(run.info.run_id).data.tags
    assert not [key for key in tags if key.startswith("process.") and key != "process.owner"]
    owner = run_owner.owner_of(tags)
    assert owner["host"] == socket.gethostname()
    assert owner["pid"] == str(os.getpid())
    assert owner["start_time"] == run_owner.process_start_time(os.getpid())
    assert owner["boot_id"] == run_owner.boot_id()


def test_a_killed_stage_run_is_ended_failed_by_the_next_process(store, tmp_path):
    """SIGKILL leaves no chance to end the run; the next process that opens the store ends it FAILED.
    A RUNNING run whose process is alive (this one) is left running."""
    with tracking.pipeline_run(experiment_name="test") as alive:
        stage = start_script(
            "import time\n"
            "from pipeline.tracking import pipeline_run\n"
            "with pipeline_run(experiment_name='test') as run:\n"
            "    print(run.info.run_id, flush=True)\n"
            "    time.sleep(60)\n",
            cwd=tmp_path,
        )
        run_id = stage.stdout.readline().strip()
        stage.kill()
        stage.wait(timeout=60)
        assert store.get_run(run_id).info.status == "RUNNING"
        next_process = start_script("from pipeline import tracking\ntracking.client()\n", cwd=tmp_path)
        assert next_process.wait(timeout=120) == 0, next_process.communicate()[1]
        ended = store.get_run(run_id)
        assert ended.info.status == "FAILED"
        reason = ended.data.tags["failure.reason"]
        assert f"process {stage.pid} on host {socket.gethostname()} ended without finishing the run" in reason
        assert store.get_run(alive.info.run_id).info.status == "RUNNING"
    assert store.get_run(alive.info.run_id).info.status == "FINISHED"


def test_a_killed_re_evaluation_leaves_a_registered_run_finished(store, tmp_path):
    """No registered version ever points at a FAILED run: a run whose model is registered had finished once,
    and a re-run killed midway (dvc repro --force evaluate) ends it FINISHED again, with the reason."""
    with tracking.pipeline_run(experiment_name="test") as run:
        model = store.create_logged_model(run.info.experiment_id, name="model", source_run_id=run.info.run_id)
    store.create_registered_model("digits-mlp")
    store.create_model_version("digits-mlp", f"models:/{model.model_id}", run_id=run.info.run_id)
    stage = start_script(
        "import time\n"
        "from pipeline.tracking import pipeline_run\n"
        f"with pipeline_run(run_id='{run.info.run_id}'):\n"
        "    print('reopened', flush=True)\n"
        "    time.sleep(60)\n",
        cwd=tmp_path,
    )
    assert stage.stdout.readline().strip() == "reopened"
    stage.kill()
    stage.wait(timeout=60)
    assert store.get_run(run.info.run_id).info.status == "RUNNING"
    next_process = start_script("from pipeline import tracking\ntracking.client()\n", cwd=tmp_path)
    assert next_process.wait(timeout=120) == 0, next_process.communicate()[1]
    ended = store.get_run(run.info.run_id)
    assert ended.info.status == "FINISHED"
    assert f"process {stage.pid} on host {socket.gethostname()}" in ended.data.tags["failure.reason"]


def owned_run(client: MlflowClient, experiment_id: str, host: str, pid: int, start_time: str) -> str:
    owner = f"host={host} pid={pid} start_time={start_time} boot_id={run_owner.boot_id()}"
    return client.create_run(experiment_id, tags={"process.owner": owner}).info.run_id


def test_a_run_that_names_its_owner_in_the_four_tags_of_before_is_ended_too(store):
    experiment = tracking.experiment_id("test")
    legacy = {"process.host": socket.gethostname(), "process.pid": str(os.getpid()), "process.start_time": "1"}
    run_id = store.create_run(experiment, tags=legacy).info.run_id
    tracking.end_abandoned_runs(store)
    assert store.get_run(run_id).info.status == "FAILED"


def test_a_reused_pid_is_not_the_owner_and_another_host_is_left_alone(store):
    experiment = tracking.experiment_id("test")
    host = socket.gethostname()
    # This process's pid, but another start time: the owner was an earlier process with the same pid.
    reused = owned_run(store, experiment, host, os.getpid(), "1")
    elsewhere = owned_run(store, experiment, "another-host.example", 1, "1")
    tracking.end_abandoned_runs(store)
    assert store.get_run(reused).info.status == "FAILED"
    assert f"process {os.getpid()} on host {host}" in store.get_run(reused).data.tags["failure.reason"]
    assert store.get_run(elsewhere).info.status == "RUNNING"


def test_a_run_ended_by_the_reaper_can_be_resumed(store):
    experiment = tracking.experiment_id("test")
    run_id = owned_run(store, experiment, socket.gethostname(), os.getpid(), "1")
    tracking.end_abandoned_runs(store)
    assert store.get_run(run_id).info.status == "FAILED"
    with tracking.pipeline_run(run_id=run_id):
        resumed = store.get_run(run_id)
        assert resumed.info.status == "RUNNING"
        owner = run_owner.owner_of(resumed.data.tags)
        assert owner["pid"] == str(os.getpid())
        assert owner["start_time"] == run_owner.process_start_time(os.getpid())
        assert "failure.reason" not in resumed.data.tags
    assert store.get_run(run_id).info.status == "FINISHED"


def test_a_deleted_experiment_is_a_config_error_that_says_how_to_restore_it(store):
    experiment = tracking.experiment_id("test")
    store.delete_experiment(experiment)
    with pytest.raises(ConfigError) as raised:
        tracking.experiment_id("test")
    message = str(raised.value)
    assert "\n" not in message
    assert "'test'" in message
    assert f"mlflow experiments restore --experiment-id {experiment}" in message
    assert "mlflow.experiment_name" in message
