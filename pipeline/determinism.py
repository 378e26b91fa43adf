"""`train.determinism` `host` or `portable` (docs/reproducibility.md, "Portable determinism"): `portable` sets
variables TensorFlow and oneDNN read once, at start, so `enter` re-executes the process with them.
"""

from __future__ import annotations

import logging
import os
import sys

from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

PORTABLE_ENVIRONMENT = {
    "TF_ENABLE_ONEDNN_OPTS": "0",
    # Even without oneDNN's graph rewrites, its sgemm picks its kernel (and so its order of additions) by
    # instruction set: cap it at SSE4.1, which every CPU TensorFlow runs on has.
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    # Parallel matrix products and reductions split their sums by thread count.
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
}
RESTARTED_VARIABLE = "MLP_DETERMINISM_RESTARTED"


def environment_for(mode: str) -> dict[str, str]:
    """The environment variables `mode` (validated by pipeline.config) needs in force before TensorFlow starts."""
    return dict(PORTABLE_ENVIRONMENT) if mode == "portable" else {}


def missing(mode: str) -> str:
    """The settings of `mode` this process lacks (or has with another value), as `NAME=value ...`; "" if none."""
    return " ".join(f"{k}={v}" for k, v in environment_for(mode).items() if os.environ.get(k) != v)


def enter(mode: str) -> None:
    """Make `mode` hold in this process: re-execute it with the variables set if any is missing."""
    if not missing(mode):
        return
    if os.environ.get(RESTARTED_VARIABLE):  # set, yet gone again: restarting once more would loop
        require(mode)
    logger.info("train.determinism %s: restarting with %s", mode, missing(mode))
    # exec replaces the process without flushing what it buffered; it keeps the pid, so DVC, signals
    # and the MLflow run's owner tag see one process.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    environment = {**os.environ, **environment_for(mode), RESTARTED_VARIABLE: "1"}
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)


def require(mode: str) -> None:
    """Refuse to train in `mode` when its variables are not in force (train() called in-process)."""
    if needed := missing(mode):
        raise PipelineError(
            f"train.determinism {mode} needs {needed} set before TensorFlow starts: "
            "run the train stage (python -m pipeline.train), or set them in the environment"
        )
