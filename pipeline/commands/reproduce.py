"""`mlp reproduce RUN_ID`: rebuild a recorded MLflow run from its lineage and judge the result
(pipeline.reproduce); `mlp reproduce --repeatability`: train the current configuration twice and compare."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys

from pipeline.errors import PipelineError
from pipeline.git import repository_top
from pipeline.reproduce.rerun import reproduce
from pipeline.reproduce.verdict import EXIT_STATUS

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("run_id", nargs="?", help="the MLflow run to reproduce")
    group.add_argument("--repeatability", action="store_true", help="train the current configuration twice and compare")
    parser.add_argument(
        "--tolerance",
        type=float,
        metavar="ACCURACY",
        help="in another environment, accept a test accuracy this far from the recorded one "
        "(default: the spread `mlp tolerance` measured for the configuration)",
    )


def run(arguments: argparse.Namespace) -> None:
    if arguments.repeatability:
        sys.exit(0 if check_repeatability() else 1)
    if arguments.tolerance is not None and not 0 <= arguments.tolerance <= 1:
        raise PipelineError(f"--tolerance {arguments.tolerance}: a difference of accuracy, between 0 and 1")
    reproduction = reproduce(arguments.run_id, repository_top(), arguments.tolerance)
    print(reproduction.report(arguments.run_id))
    sys.exit(EXIT_STATUS[reproduction.judge()[0]])


def check_repeatability() -> bool:
    """Train the current configuration twice, in separate processes; print the weights' hashes."""
    hashes = []
    for attempt in (1, 2):
        logger.info("training %d of 2", attempt)
        command = [sys.executable, "-m", "pipeline.train", "--hash-only"]
        result = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise PipelineError(f"training {attempt} of 2 failed (exit status {result.returncode})")
        hashes.append(result.stdout.strip().splitlines()[-1])
        print(f"training {attempt}: weights sha256 {hashes[-1]}")
    repeatable = hashes[0] == hashes[1]
    print("verdict: " + ("repeatable" if repeatable else "NOT repeatable"))
    return repeatable
