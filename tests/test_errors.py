"""run_stage: a stage run as a program exits as soon as its work is written; a caller in the same process
(`mlp`, a test calling pipeline.cli.main) gets control back."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPOSITORY


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True, timeout=120)


def test_a_command_called_in_process_returns_to_its_caller(tmp_path):
    output = tmp_path / "params.yaml"
    result = run_python(f"from pipeline.cli import main\nmain(['params', '--output', {str(output)!r}])\nprint('back')")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "back"
    assert output.read_text().startswith("seed:")


def test_a_program_s_main_ends_the_process_with_status_0_after_its_exit_handlers():
    code = (
        "import atexit, threading\n"
        "from pipeline.errors import run_stage\n"
        "atexit.register(lambda: print('exit handler ran', flush=True))\n"
        "def main():\n"
        "    threading.Thread(target=lambda: print('thread finished', flush=True)).start()\n"
        "run_stage(main)\n"
        "print('not reached')\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["thread finished", "exit handler ran"]
