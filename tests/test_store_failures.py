"""An MLflow store that is unreachable, broken or unusable stops a stage within a minute, in one line that names
the store, what failed first and what to do; no traceback, exit status 1."""

from __future__ import annotations

import errno
import http.server
import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPOSITORY, free_port

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


def open_a_run(cwd, tracking_uri: str) -> tuple[subprocess.CompletedProcess, float]:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "MLFLOW_TRACKING_URI": tracking_uri}
    for variable in ("DVC_ROOT", "MLP_TRACEBACK"):
        environment.pop(variable, None)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", OPEN_A_RUN], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )
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


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_a_read_only_store_fails_in_one_line(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result, _ = open_a_run(tmp_path, uri)  # creates the store and one run
    assert result.returncode == 0, result.stderr
    (tmp_path / "mlflow.db").chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        result, _ = open_a_run(tmp_path, uri)
    finally:
        tmp_path.chmod(0o755)
    assert result.returncode == 1
    [line] = error_lines(result)
    assert "readonly" in line or "read-only" in line


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
