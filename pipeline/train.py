"""Stage `train`: fit the MLP on the training split and log the run to MLflow.

Reads params `seed`, `dataset.num_classes`, `dataset.task`, `model`, `optimizer`, `train`,
`mlflow` and data/processed/; writes data/model/model.keras, data/model/mlflow_run.json
(the MLflow run the evaluate stage adds to), reports/training_history.csv (one
row per epoch, for `dvc plots`), and the architecture: reports/model_summary.txt
(Keras' summary), reports/model_config.json (the model's get_config()) and
reports/architecture.png (a diagram).

The MLflow run gets every composed parameter (flattened), per-epoch training and
validation metrics with their epoch as step, and the model with a signature and
an input example, registered in the Model Registry; and the run's lineage
(pipeline.lineage): commit, configuration overrides, data hashes, package
versions, CPU and thread settings, and the sha256 of the trained weights.

`python -m pipeline.train --hash-only` trains without writing anything and
prints the weights' sha256: the repeatability check runs it twice.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from pipeline.config import PARAMS_FILE, ModelConfig, OptimizerConfig, Params, TrainConfig, flatten, load_params
from pipeline.datasets import PROCESSED_DIRECTORY, RAW_DIRECTORY, load_split
from pipeline.errors import run_stage

logger = logging.getLogger(__name__)

MODEL_FILE = Path("data/model/model.keras")
HISTORY_FILE = Path("reports/training_history.csv")
SUMMARY_FILE = Path("reports/model_summary.txt")
MODEL_CONFIG_FILE = Path("reports/model_config.json")
ARCHITECTURE_FILE = Path("reports/architecture.png")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow from one seed and make TensorFlow's ops deterministic."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def train(
    train_inputs: np.ndarray,
    train_labels: np.ndarray,
    validation_inputs: np.ndarray,
    validation_labels: np.ndarray,
    num_classes: int,
    model_config: ModelConfig,
    optimizer_config: OptimizerConfig,
    train_config: TrainConfig,
    seed: int,
    callbacks: list | None = None,
    task: str = "multiclass",
):
    """Build, compile and fit the MLP; return (model, history) with history as {metric: [value per epoch]}."""
    import keras

    from pipeline.model import build_mlp, keras_loss, make_optimizer, training_targets

    # Seeded here, right before the first random draw: anything that ran before
    # (MLflow picks run names with Python's global `random`, which Keras also
    # draws initializer seeds from) cannot change the weights.
    seed_everything(seed)

    model = build_mlp(train_inputs.shape[1], num_classes, model_config, task)
    model.compile(
        optimizer=make_optimizer(optimizer_config),
        loss=keras_loss(train_config.loss),
        metrics=["accuracy"],
    )
    train_targets = training_targets(train_labels, train_config.loss, task, num_classes)
    validation_targets = training_targets(validation_labels, train_config.loss, task, num_classes)
    callbacks = list(callbacks or [])
    has_validation = len(validation_labels) > 0
    if train_config.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=train_config.early_stopping_patience, restore_best_weights=True
            )
        )
    history = model.fit(
        train_inputs,
        train_targets,
        batch_size=train_config.batch_size,
        epochs=train_config.epochs,
        validation_data=(validation_inputs, validation_targets) if has_validation else None,
        shuffle=True,
        callbacks=callbacks,
        verbose=2,  # one line per epoch: readable in `dvc repro` logs
    )
    return model, {name: [float(value) for value in values] for name, values in history.history.items()}


def write_history(history: dict[str, list[float]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(history)
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["epoch", *names])
        for epoch, values in enumerate(zip(*(history[name] for name in names), strict=True), start=1):
            writer.writerow([epoch, *(f"{value:.6g}" for value in values)])


def model_summary(model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    return "\n".join(lines) + "\n"


def save_model(model, path: Path) -> None:
    """Save to a temporary .keras file beside `path`, then rename: never a half-written model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".keras", dir=path.parent)
    os.close(handle)
    try:
        model.save(temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def log_model(model, example_inputs: np.ndarray, registered_model_name: str) -> None:
    import keras
    import mlflow
    import tensorflow as tf
    from mlflow.models import infer_signature

    signature = infer_signature(example_inputs, model.predict(example_inputs, verbose=0))
    # The tensorflow flavor: it saves Keras 3 models as .keras files too, and
    # (unlike mlflow.keras in this release) stores the input example correctly.
    mlflow.tensorflow.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example_inputs,
        registered_model_name=registered_model_name,
        # Listed rather than inferred: inference re-loads the model in a
        # subprocess, and would pick the GPU build of TensorFlow.
        pip_requirements=[
            f"tensorflow-cpu=={tf.__version__}",
            f"keras=={keras.__version__}",
            f"mlflow=={mlflow.__version__}",
        ],
    )


def log_datasets(params: Params, splits: dict[str, tuple[np.ndarray, np.ndarray]], context: str) -> None:
    """Log each split as an MLflow dataset input (MLflow computes its digest)."""
    import mlflow

    source = params.dataset.urls[0]
    for split, (inputs, labels) in splits.items():
        if len(labels):
            dataset = mlflow.data.from_numpy(
                inputs, targets=labels, name=f"{params.dataset.name}-{split}", source=source
            )
            mlflow.log_input(dataset, context=context if split != "validation" else "validation")


def run_tags(params: Params) -> tuple[dict[str, str], str]:
    """The lineage tags of a new run, and the uncommitted diff of the code ("" when clean)."""
    from pipeline import lineage

    code, diff = lineage.code_tags()
    # Computed, not copied from the pins: a dataset may pin only an md5.
    data = lineage.data_tags([RAW_DIRECTORY / spec.name for spec in params.dataset.files.values()])
    overrides = " ".join(lineage.config_overrides()) or "(none)"
    return {**code, **lineage.environment_tags(), **data, "config.overrides": overrides}, diff


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the MLP on data/processed and log the run to MLflow.")
    parser.add_argument(
        "--hash-only",
        action="store_true",
        help="train, print the weights' sha256 and exit: no files written, no MLflow run (for repeatability checks)",
    )
    arguments = parser.parse_args()
    params: Params = load_params()
    import keras
    import mlflow

    from pipeline.model import draw_architecture, weights_sha256
    from pipeline.tracking import pipeline_run, write_run_file

    train_inputs, train_labels = load_split(PROCESSED_DIRECTORY, "train")
    validation_inputs, validation_labels = load_split(PROCESSED_DIRECTORY, "validation")
    arrays = (train_inputs, train_labels, validation_inputs, validation_labels, params.dataset.num_classes)
    configs = (params.model, params.optimizer, params.train, params.seed)

    if arguments.hash_only:
        model, _ = train(*arrays, *configs, task=params.dataset.task)
        print(weights_sha256(model))
        return

    tags, diff = run_tags(params)
    with pipeline_run(experiment_name=params.mlflow.experiment_name, tags=tags) as run:
        logger.info("MLflow run %s", run.info.run_id)
        mlflow.log_params(flatten(params.model_dump()))
        mlflow.log_artifact(str(PARAMS_FILE), artifact_path="config")
        if diff:
            mlflow.log_text(diff, "lineage/git_diff.patch")
        log_datasets(
            params,
            {"train": (train_inputs, train_labels), "validation": (validation_inputs, validation_labels)},
            "training",
        )
        log_epoch = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: mlflow.log_metrics(
                {name: float(value) for name, value in logs.items()}, step=epoch + 1
            )
        )
        model, history = train(*arrays, *configs, callbacks=[log_epoch], task=params.dataset.task)
        save_model(model, MODEL_FILE)
        write_history(history, HISTORY_FILE)
        summary = model_summary(model)
        SUMMARY_FILE.write_text(summary, encoding="utf-8")
        # The layer-by-layer definition Keras can rebuild the network from (keras.Sequential.from_config).
        MODEL_CONFIG_FILE.write_text(json.dumps(model.get_config(), indent=2) + "\n", encoding="utf-8")
        draw_architecture(model, ARCHITECTURE_FILE)
        mlflow.log_param("model.parameter_count", model.count_params())
        mlflow.set_tag("model.weights_sha256", weights_sha256(model))
        for path in (SUMMARY_FILE, MODEL_CONFIG_FILE, ARCHITECTURE_FILE):
            mlflow.log_artifact(str(path), artifact_path="architecture")
        log_model(model, train_inputs[:5], params.mlflow.registered_model_name)
        write_run_file(run)
    logger.info("trained %d parameters; weights sha256 %s", model.count_params(), weights_sha256(model))


if __name__ == "__main__":
    run_stage(main)
