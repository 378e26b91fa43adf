"""How far the test metrics of a configuration move when only the seed changes, measured by `mlp tolerance`
into reports/tolerance/<configuration sha256>.json (small, meant to be committed). `mlp reproduce` judges
a reproduction in another environment by it: another CPU or thread count rounds differently, which must
not move a metric further than another seed does."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from pipeline import determinism
from pipeline.config import MAX_SEED, Params, load_params
from pipeline.errors import PipelineError
from pipeline.files import write_json
from pipeline.paths import REPORTS_DIRECTORY, processed_directory

logger = logging.getLogger(__name__)

TOLERANCE_DIRECTORY = REPORTS_DIRECTORY / "tolerance"
# Not part of what is measured: the seed is what varies, the others only name things.
UNMEASURED_KEYS = {"seed", "mirror", "mlflow"}


def configuration_sha256(params: Params) -> str:
    """sha256 of the configuration without seed, mirror and MLflow names: the key of its tolerance file."""
    measured = params.model_dump(mode="json", exclude=UNMEASURED_KEYS)
    return hashlib.sha256(json.dumps(measured, sort_keys=True).encode("utf-8")).hexdigest()


def tolerance_file(params: Params, repository: Path = Path()) -> Path:
    return repository / TOLERANCE_DIRECTORY / f"{configuration_sha256(params)}.json"


def read_tolerances(params: Params, repository: Path = Path()) -> dict[str, float] | None:
    """Metric -> tolerance measured for this configuration, or None when `mlp tolerance` has not measured it."""
    path = tolerance_file(params, repository)
    if not path.exists():
        return None
    try:
        return {name: float(value) for name, value in json.loads(path.read_text(encoding="utf-8"))["tolerance"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise PipelineError(
            f"{path} is not a tolerance file ({error}): measure it again with `mlp tolerance`"
        ) from None


def write_tolerance_file(seed_count: int) -> tuple[Path, dict]:
    """Train the configuration of params.yaml with `seed_count` seeds (seed, seed+1, ...), each as the train
    stage would, in its train.determinism mode, score each as the evaluate stage does, and write its tolerance
    file; return the file and what it holds."""
    params = load_params()
    determinism.enter(params.train.determinism)
    # Imported here: after determinism.enter, and `mlp reproduce` (which only reads tolerances) needs neither stage.
    import keras

    from pipeline.evaluate import evaluate
    from pipeline.splits import load_splits, training_targets
    from pipeline.train import train_with_params

    seeds = [(params.seed + offset) % (MAX_SEED + 1) for offset in range(seed_count)]
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
    measured = {
        "configuration_sha256": configuration_sha256(params),
        "what": "test metrics after training this configuration with each seed; tolerance: their range",
        "seeds": seeds,
        "metrics": metrics,
        "tolerance": {name: max(values) - min(values) for name, values in metrics.items()},
    }
    path = tolerance_file(params)
    write_json(path, measured)
    return path, measured
