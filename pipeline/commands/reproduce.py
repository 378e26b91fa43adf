"""`mlp reproduce`: re-run a recorded MLflow run from its lineage alone and judge the result.

    mlp reproduce RUN_ID [--tolerance ACCURACY]
        Reads the run's lineage record (lineage/lineage.json), checks out its
        commit in a temporary git worktree (applying its recorded diff if the
        tree was dirty), writes its recorded params.yaml, verifies the raw data
        against the recorded sha256s, shares this repository's DVC cache, pulls
        the data from DVC when it can (pipeline.reproduce.data), runs `dvc repro
        --force` on the rest into the same MLflow store,
        and compares every test metric, the weights' sha256 and the environment
        (lineage/environment.json: CPU, thread counts, oneDNN, packages), and
        names the stage inputs whose dvc.lock md5 is not the recorded one. The
        verdict (pipeline.reproduce.verdict) is identical (exit status 0),
        equivalent within tolerance in another environment (3) or mismatch (1);
        the tolerance is the one `mlp tolerance` measured for the configuration
        (reports/tolerance/), or --tolerance for the test accuracy. The
        reproduction is an MLflow run tagged `reproduces` and `reproduction.verdict`.

    mlp reproduce --repeatability
        Trains the current configuration on data/processed twice, in separate
        processes, and compares the weights' sha256.

Not a DVC stage: it runs the pipeline rather than being part of it. The
work is done in the package pipeline.reproduce.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.errors import PipelineError
from pipeline.git import repository_top
from pipeline.reproduce.repeatability import check_repeatability
from pipeline.reproduce.rerun import reproduce
from pipeline.reproduce.verdict import EXIT_STATUS


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
        hashes = check_repeatability()
        print("\n".join(f"training {index}: weights sha256 {value}" for index, value in enumerate(hashes, start=1)))
        repeatable = len(set(hashes)) == 1
        print("verdict: " + ("repeatable" if repeatable else "NOT repeatable"))
        sys.exit(0 if repeatable else 1)
    if arguments.tolerance is not None and not 0 <= arguments.tolerance <= 1:
        raise PipelineError(f"--tolerance {arguments.tolerance}: a difference of accuracy, between 0 and 1")
    reproduction = reproduce(arguments.run_id, repository_top(), arguments.tolerance)
    print(reproduction.report(arguments.run_id))
    sys.exit(EXIT_STATUS[reproduction.verdict])
