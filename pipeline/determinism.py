"""Training determinism modes (`train.determinism`): `host` and `portable`.

`host` is TensorFlow as installed: bitwise identical weights on the same
machine, not across CPUs. `portable` pins what makes the arithmetic depend on
the CPU, measured in benchmarks/portability.py (reports/portability/README.md):
the same weights on every x86-64 CPU TensorFlow runs on (it needs AVX).

Every setting of `portable` is an environment variable TensorFlow or oneDNN
reads once, when it starts: `enter` re-executes the process with them set, so
it must run before anything has trained.
"""

from __future__ import annotations

import logging
import os
import sys

from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

PORTABLE_ENVIRONMENT = {
    # TensorFlow's oneDNN graph rewrites: on by default only on CPUs with some
    # AVX-512/AMX features, so two machines could run different kernels.
    "TF_ENABLE_ONEDNN_OPTS": "0",
    # Even without them, TensorFlow's matrix products call oneDNN's sgemm, which
    # picks its kernel (and so its order of additions) by instruction set: cap it
    # at SSE4.1, which every CPU TensorFlow runs on has.
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    # Parallel matrix products and reductions split their sums by thread count.
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
}
MODES = ("host", "portable")
RESTARTED_VARIABLE = "MLP_DETERMINISM_RESTARTED"


def environment_for(mode: str) -> dict[str, str]:
    """The environment variables `mode` needs in force before TensorFlow starts."""
    if mode not in MODES:
        raise PipelineError(f"train.determinism = {mode!r}: expected one of {', '.join(MODES)}")
    return dict(PORTABLE_ENVIRONMENT) if mode == "portable" else {}


def missing(mode: str) -> dict[str, str]:
    """The variables of `mode` this process does not have (or has with another value)."""
    return {name: value for name, value in environment_for(mode).items() if os.environ.get(name) != value}


def enter(mode: str) -> None:
    """Make `mode` hold in this process: re-execute it with the variables set if any is missing."""
    needed = missing(mode)
    if not needed:
        return
    if os.environ.get(RESTARTED_VARIABLE):  # set, yet gone again: restarting once more would loop
        require(mode)
    logger.info("train.determinism %s: restarting with %s", mode, " ".join(f"{k}={v}" for k, v in needed.items()))
    # exec replaces the process without flushing what it buffered.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # exec keeps the pid, so DVC, signals and the MLflow run's owner tags see one process.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **needed, RESTARTED_VARIABLE: "1"})


def require(mode: str) -> None:
    """Refuse to train in `mode` when its variables are not in force (train() called in-process)."""
    needed = missing(mode)
    if needed:
        settings = " ".join(f"{name}={value}" for name, value in needed.items())
        raise PipelineError(
            f"train.determinism {mode} needs {settings} set before TensorFlow starts: "
            "run the train stage (python -m pipeline.train), or set them in the environment"
        )
