"""`mlp tolerance [--seeds N]`: how far the test metrics of params.yaml's configuration move when only
the seed changes, written to reports/tolerance/ for `mlp reproduce` (pipeline.reproduce.tolerance)."""

from __future__ import annotations

import argparse

from pipeline.errors import PipelineError
from pipeline.reproduce.tolerance import write_tolerance_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=5, help="trainings, each with its own seed (default: 5)")


def run(arguments: argparse.Namespace) -> None:
    if arguments.seeds < 2:
        raise PipelineError(f"--seeds {arguments.seeds}: a spread needs at least 2 trainings")
    path, measured = write_tolerance_file(arguments.seeds)
    accuracy, tolerance = measured["metrics"]["test_accuracy"], measured["tolerance"]["test_accuracy"]
    print(
        f"test accuracy over {len(measured['seeds'])} seeds: {min(accuracy):.4f} to "
        f"{max(accuracy):.4f}; tolerance {tolerance:.4f}, written to {path}"
    )
