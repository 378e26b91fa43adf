"""An MLflow store that is unreachable, broken or unusable stops a stage within a minute, in one line that names
the store, what failed first and what to do; no traceback, exit status 1."""

from __future__ import annotations

import errno
import http.server
import json
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest
from conftest import BIN_DIRECTORY, REPOSITORY, TINY_DATASET, free_port, make_tiny_project, run

from pipeline.stage import outside_failure

# A stage's first MLflow call, through the stage runner: open the run as the train stage does.
OPEN_A_RUN = (
    "from pipeline.stage import run_stage\n"
    "from pipeline import tracking\n"
    "def main():\n"
    "    with tracking.pipeline_run(experiment_name='keras-mlp'):\n"
    "        pass\n"
    "run_stage(main)\n"
)


def open_a_run(
    cwd, tracking_uri: str, script: str = OPEN_A_RUN, prefix: tuple[str, ...] = ()
) -> tuple[subprocess.CompletedProcess, float]:
    """Run `script` as a stage would, with `prefix` before the command (a read-only mount around it)."""
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "MLFLOW_TRACKING_URI": tracking_uri}
    for variable in ("DVC_ROOT", "MLP_TRACEBACK"):
        environment.pop(variable, None)
    started = time.monotonic()
    command = [*prefix, sys.executable, "-c", script]
    result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)
    return result, time.monotonic() - started


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if " ERROR: " in line]


def test_an_unreachable_tracking_server_fails_within_a_minute_in_one_line(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    result, seconds = open_a_run(tmp_path, uri)
    assert result.returncode == 1
    [line] = error_lines(result)
    assert f"MLflow store {uri} failed" in line and "Connection refused" in line and "run the stage again" in line
    assert seconds < 60
    # Each retry is logged.
    assert result.stderr.count("Retrying") == 3


class FailingHandler(http.server.BaseHTTPRequestHandler):
    """A tracking server whose database is gone: every request answers 500."""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_error(500, "database unavailable")

    do_POST = do_GET  # noqa: N815

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


def test_a_tracking_server_that_answers_errors_fails_within_a_minute_in_one_line(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FailingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_port}"
        result, seconds = open_a_run(tmp_path, uri)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1
    [line] = error_lines(result)
    assert f"MLflow store {uri} failed" in line and "500" in line
    assert seconds < 60


@pytest.mark.parametrize("uri", ["garbage", "file:///tmp/mlruns", "ftp://example/store"])
def test_a_uri_that_is_not_a_store_is_refused_in_one_line(tmp_path, uri):
    result, _ = open_a_run(tmp_path, uri)
    assert result.returncode == 1
    [line] = error_lines(result)
    assert f"MLFLOW_TRACKING_URI={uri} is not a store" in line


@pytest.mark.parametrize(
    "content", [os.urandom(4096), b"SQLite format 3\x00" + b"\x10\x00" + b"\x00" * 90], ids=["random", "truncated"]
)
def test_a_corrupt_store_file_fails_in_one_line_and_is_left_as_it_was(tmp_path, content):
    store = tmp_path / "mlflow.db"
    store.write_bytes(content)
    uri = f"sqlite:///{store}"
    result, _ = open_a_run(tmp_path, uri)
    assert result.returncode == 1
    [line] = error_lines(result)
    assert f"MLflow store {uri} failed" in line and "DatabaseError" in line
    assert store.read_bytes() == content


LOG_AN_ARTIFACT = OPEN_A_RUN.replace("        pass\n", "        mlflow.log_text('logged', 'note.txt')\n").replace(
    "from pipeline import tracking\n", "from pipeline import tracking\nimport mlflow\n"
)
# A read-only bind mount of a folder, in a mount namespace of the command's own (as an unprivileged user, in a user
# namespace too): read-only even to root, who writes through any file mode, and gone when the command ends.
READ_ONLY = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"']


def namespaces_work(folder) -> bool:
    try:
        probe = subprocess.run([*READ_ONLY, str(folder), "true"], capture_output=True, timeout=30)
    except FileNotFoundError:  # no unshare
        return False
    return probe.returncode == 0


@pytest.mark.slow  # tens of seconds: runs in make test-slow
def test_a_read_only_store_fails_in_one_line(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    result, _ = open_a_run(tmp_path, uri)  # creates the store and one run
    assert result.returncode == 0, result.stderr
    if not namespaces_work(store):
        pytest.skip("`unshare --user --mount` is not allowed here: no read-only mount to test with")
    result, _ = open_a_run(tmp_path, uri, prefix=(*READ_ONLY, str(store)))
    assert result.returncode == 1
    [line] = error_lines(result)
    assert "readonly" in line or "read-only" in line


@pytest.mark.slow  # tens of seconds: runs in make test-slow
def test_a_read_only_artifact_folder_fails_in_one_line(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first, _ = open_a_run(tmp_path, uri, LOG_AN_ARTIFACT)
    assert first.returncode == 0, first.stderr  # the store, and mlartifacts/ with one run's artifact
    if not namespaces_work(tmp_path / "mlartifacts"):
        pytest.skip("`unshare --user --mount` is not allowed here: no read-only mount to test with")
    result, _ = open_a_run(tmp_path, uri, LOG_AN_ARTIFACT, prefix=(*READ_ONLY, str(tmp_path / "mlartifacts")))
    assert result.returncode == 1
    [line] = error_lines(result)
    assert "Read-only file system" in line and str(tmp_path / "mlartifacts") in line and "run the stage again" in line
    assert "Retrying" not in result.stderr  # at the first write: nothing to wait for


def test_a_full_or_read_only_disk_is_named_with_its_file():
    for code in (errno.ENOSPC, errno.EROFS):
        try:
            try:
                raise OSError(code, os.strerror(code), ".checkpoints/abc.ckpt")
            except OSError as error:
                raise RuntimeError("saving the checkpoint failed") from error
        except RuntimeError as error:
            line = outside_failure(error)
        assert line is not None and ".checkpoints/abc.ckpt" in line and os.strerror(code) in line
        assert "run the stage again" in line
    # A bug is not dressed up as an outside failure: it keeps its traceback.
    assert outside_failure(KeyError("bug")) is None


KILLED_STORE_EPOCHS = 60
# DVC composes params.yaml from conf/ and these overrides (conf/'s default is the full MNIST).
EXPERIMENT = ["dvc", "exp", "run", "-S", f"dataset={TINY_DATASET}", "-S", f"train.epochs={KILLED_STORE_EPOCHS}"]


@pytest.mark.slow
def test_a_killed_database_under_the_team_server_stops_training_within_a_minute_and_the_run_resumes(
    tmp_path, tiny_dataset_server
):
    """kill -9 of the server's PostgreSQL while `dvc exp run` trains: the stage exits in one line naming the
    tracking URI within 60 s; once `mlp server start` has brought the database back, the same command resumes."""
    state, port = tmp_path / "server", free_port()
    run(["mlp", "server", "start", "--state-dir", str(state), "--port", str(port), "--workers", "1"], cwd=tmp_path)
    try:
        uri = f"http://127.0.0.1:{port}"
        credentials = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ""}
        credentials["MLFLOW_TRACKING_PASSWORD"] = (state / "admin_password").read_text().strip()
        path = make_tiny_project(tmp_path / "project", tiny_dataset_server, f"train.epochs={KILLED_STORE_EPOCHS}")
        run(["dvc", "repro", "preprocess"], cwd=path)
        environment = {
            **os.environ, "PATH": f"{BIN_DIRECTORY}{os.pathsep}{os.environ['PATH']}", "MLFLOW_TRACKING_URI": uri,
            **credentials,
        }  # fmt: skip
        for variable in ("DVC_ROOT", "MLP_TRACEBACK", "MLP_DATA_MIRROR"):
            environment.pop(variable, None)
        process = subprocess.Popen(
            [*EXPERIMENT, "train"], cwd=path, env=environment, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        output = []
        for line in process.stdout:
            output.append(line)
            if line.startswith(f"Epoch 5/{KILLED_STORE_EPOCHS}"):
                break
        postmaster = psutil.Process(int((state / "postgres/postmaster.pid").read_text().split()[0]))
        postmaster.kill()
        killed = time.monotonic()
        output += process.stdout.readlines()
        process.wait()
        seconds = time.monotonic() - killed
        print(f"\nkill -9 of PostgreSQL to the stage's exit: {seconds:.1f} s")
        text = "".join(output)
        assert process.returncode != 0 and "Traceback" not in text, text[-3000:]
        [line] = [line for line in text.splitlines() if " ERROR: " in line]
        assert f"MLflow store {uri} failed" in line and "run the stage again" in line, line
        assert seconds < 60, text[-3000:]

        run(["mlp", "server", "start", "--state-dir", str(state)], cwd=tmp_path)
        resumed = run([*EXPERIMENT, "train"], cwd=path, MLFLOW_TRACKING_URI=uri, **credentials)
        assert "resuming after epoch" in resumed.stdout + resumed.stderr
        assert json.loads((path / "data/model/mlflow_run.json").read_text())["run_id"]
    finally:
        run(["mlp", "server", "stop", "--state-dir", str(state)], cwd=tmp_path, check=False)


def test_a_failing_search_storage_is_named_as_such_not_as_the_mlflow_store(monkeypatch):
    import optuna
    import sqlalchemy.exc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    try:
        try:
            raise sqlalchemy.exc.OperationalError("UPDATE trials", {}, Exception("the database is shutting down"))
        except sqlalchemy.exc.OperationalError as error:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from error
    except optuna.exceptions.StorageInternalError as error:
        line = outside_failure(error)
    assert line is not None and line.startswith("the search's study storage failed") and "shutting down" in line
    assert "MLflow" not in line
