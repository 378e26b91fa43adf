"""run_stage: an error of ours is one line and exit status 1, an interruption exit status 130, and after
main() returns, so does run_stage: a program exits normally, a caller in the same process
(`mlp`, a test calling pipeline.cli.main) gets control back."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPOSITORY


def run_python(code: str, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPOSITORY), **environment},
    )


def run_stage_with(body: str, **environment: str) -> subprocess.CompletedProcess:
    """A program whose main() runs `body` under run_stage, then prints 'after'."""
    code = (
        "import atexit, threading\n"
        "from pipeline.errors import ConfigError\n"
        "from pipeline.stage import run_stage\n"
        "atexit.register(lambda: print('exit handler ran', flush=True))\n"
        "def main():\n"
        f"    {body}\n"
        "run_stage(main)\n"
        "print('after', flush=True)\n"
    )
    return run_python(code, **environment)


def test_a_command_called_in_process_returns_to_its_caller(tmp_path):
    output = tmp_path / "params.yaml"
    result = run_python(f"from pipeline.cli import main\nmain(['params', '--output', {str(output)!r}])\nprint('back')")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "back"
    assert output.read_text().startswith("seed:")


def test_a_program_s_main_returns_and_the_program_exits_normally():
    result = run_stage_with("threading.Thread(target=lambda: print('thread finished', flush=True)).start()")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["thread finished", "after", "exit handler ran"]


def test_an_error_of_ours_is_one_line_and_exit_status_1():
    result = run_stage_with("raise ConfigError('train.epochs: must be at least 1')")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].endswith(" pipeline ERROR: train.epochs: must be at least 1")
    assert "Traceback" not in result.stderr and "after" not in result.stdout


def test_mlp_traceback_shows_the_traceback_of_an_error_of_ours():
    result = run_stage_with("raise ConfigError('bad')", MLP_TRACEBACK="1")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and result.stderr.splitlines()[-1] == "pipeline.errors.ConfigError: bad"


def test_a_bug_keeps_its_traceback():
    result = run_stage_with("raise ValueError('a bug')")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and result.stderr.splitlines()[-1] == "ValueError: a bug"


@pytest.mark.parametrize("body", ["raise KeyboardInterrupt", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"])
def test_an_interrupted_program_exits_with_status_130(body):
    result = run_stage_with(body)
    assert result.returncode == 130
    assert result.stderr.splitlines()[-1].endswith(" pipeline ERROR: interrupted")


def test_a_store_failure_while_an_interrupted_stage_ends_is_named_with_the_interruption():
    # Ending the MLflow run KILLED can fail too (here the disk): the user learns why it is not KILLED.
    body = (
        "import errno, os, signal\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    except KeyboardInterrupt:\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device')"
    )
    result = run_stage_with(body)
    assert result.returncode == 130, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.endswith(
        " pipeline ERROR: interrupted; then OSError: [Errno 28] No space left on device: free "
        "space or fix permissions there, then run the stage again (the run resumes)"
    ), last


def test_a_signal_python_drops_in_a_finalizer_still_stops_the_stage_at_the_next_check():
    # Python prints "Exception ignored in ..." for the KeyboardInterrupt raised while __del__ runs and goes on.
    code = (
        "import os, signal, time\n"
        "from pipeline.stage import raise_if_interrupted, run_stage\n"
        "class Finalized:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        time.sleep(1)\n"
        "def main():\n"
        "    Finalized()\n"
        "    print('went on', flush=True)\n"
        "    raise_if_interrupted()\n"
        "    print('not reached', flush=True)\n"
        "run_stage(main)\n"
    )
    result = run_python(code)
    assert "Exception ignored in" in result.stderr
    assert result.stdout.splitlines() == ["went on"]
    assert result.returncode == 130
