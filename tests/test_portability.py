"""train.determinism: portable gives, on this CPU, the weights that every CPU of reports/portability/ gave.

benchmarks/portability.py measured the tiny configuration natively, with oneDNN
capped at AVX2, on one core and under QEMU's Haswell, Sandy Bridge and EPYC-Rome,
and committed the one hash they all gave; a CPU that gives another one breaks
the mode's promise. The training runs in a child process: the mode's settings
must be in force before TensorFlow starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPOSITORY

from pipeline.determinism import PORTABLE_ENVIRONMENT

EXPECTED = json.loads((REPOSITORY / "reports/portability/portable_weights.json").read_text())


def test_the_committed_hash_belongs_to_the_portable_mode_as_it_is():
    assert EXPECTED["environment"] == PORTABLE_ENVIRONMENT


@pytest.mark.slow  # tens of seconds: runs in make test-slow
def test_portable_training_gives_the_committed_weights_on_this_cpu():
    result = subprocess.run(
        [sys.executable, "benchmarks/portability.py", "--child", "portable"],
        cwd=REPOSITORY,
        env={**os.environ, **PORTABLE_ENVIRONMENT},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cell = json.loads(result.stdout.strip().splitlines()[-1])
    assert cell["weights_sha256"] == EXPECTED["weights_sha256"], (
        f"the portable mode is not portable to this CPU (CPUID: {', '.join(cell['cpuid'])}): "
        "add it to reports/portability/README.md's matrix and reconsider the mode"
    )
