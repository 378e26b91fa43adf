"""`mlp tolerance`: how far the test metrics of a configuration move when only the seed changes.

    mlp tolerance [--seeds N]
        Trains the configuration of params.yaml on data/processed N times (seeds
        seed, seed+1, ..., in one process, each as the train stage would, in its
        train.determinism mode), scores each on the test split as the evaluate
        stage does, and writes reports/tolerance/<configuration sha256>.json: the
        metrics of every seed and, per metric, the tolerance: the range (largest
        minus smallest) across the seeds.

`mlp reproduce` judges a reproduction made in another environment against
this file (pipeline.reproduce.tolerance holds both sides).
"""

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
