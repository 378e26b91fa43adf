"""`mlp tolerance [--seeds N]`: how far the test metrics of params.yaml's configuration move when only
the seed changes, written to reports/tolerance/ for `mlp reproduce` to judge other machines by."""

from __future__ import annotations

import argparse
import logging

from pipeline import determinism
from pipeline.config import MAX_SEED, load_params
from pipeline.errors import PipelineError
from pipeline.files import write_json
from pipeline.paths import processed_directory
from pipeline.reproduce.verdict import configuration_sha256, tolerance_file

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=5, help="trainings, each with its own seed (default: 5)")


def run(arguments: argparse.Namespace) -> None:
    """Train the configuration of params.yaml with seeds seed, seed+1, ..., each as the train stage would (in
    its train.determinism mode), score each as the evaluate stage does, and write the tolerance file."""
    if arguments.seeds < 2:
        raise PipelineError(f"--seeds {arguments.seeds}: a spread needs at least 2 trainings")
    params = load_params()
    determinism.enter(params.train.determinism)
    # Imported here: after determinism.enter, and `mlp --help` needs neither stage.
    import keras

    from pipeline.evaluate import evaluate
    from pipeline.splits import load_splits, training_targets
    from pipeline.train import train_with_params

    seeds = [(params.seed + offset) % (MAX_SEED + 1) for offset in range(arguments.seeds)]
    dataset = params.dataset
    training, validation, test = load_splits(
        processed_directory(dataset.name), ["train", "validation", "test"], dataset
    )
    targets = training_targets(test.labels, loss=params.train.loss, task=dataset.task, num_classes=dataset.num_classes)
    metrics: dict[str, list[float]] = {}
    for index, seed in enumerate(seeds, start=1):
        keras.utils.clear_session()  # one model at a time in memory
        model, _ = train_with_params(params.model_copy(update={"seed": seed}), training, validation)
        scores = evaluate(model, test.inputs, test.labels, class_names=dataset.class_names, targets=targets)["test"]
        for name, value in scores.items():
            metrics.setdefault(f"test_{name}", []).append(value)
        logger.info("seed %d (%d of %d): test accuracy %.4f", seed, index, len(seeds), scores["accuracy"])
    tolerance = {name: max(values) - min(values) for name, values in metrics.items()}
    measured = {
        "configuration_sha256": configuration_sha256(params),
        "what": "test metrics after training this configuration with each seed; tolerance: their range",
        "seeds": seeds,
        "metrics": metrics,
        "tolerance": tolerance,
    }
    path = tolerance_file(params)
    write_json(path, measured)
    accuracy = metrics["test_accuracy"]
    print(
        f"test accuracy over {len(seeds)} seeds: {min(accuracy):.4f} to {max(accuracy):.4f}; "
        f"tolerance {tolerance['test_accuracy']:.4f}, written to {path}"
    )
