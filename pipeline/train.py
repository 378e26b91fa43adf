"""Stage `train`: fit the MLP on the training split and log the run to MLflow (docs/mlflow.md: what it records).

Reads params `seed`, `dataset`, `model`, `optimizer`, `train`, `mlflow.experiment_name` and data/processed/; writes
data/model/model.keras, data/model/mlflow_run.json (the MLflow run and logged model, for the evaluate stage),
reports/training_history.csv (one row per epoch, for `dvc plots`) and the architecture: reports/model_summary.txt,
reports/model_config.json and reports/architecture.png.
`--hash-only` trains without writing anything and prints the weights' sha256 (for repeatability checks).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf
from mlflow.models import infer_signature

from pipeline import classifier, determinism, lineage, paths, tracking
from pipeline.classifier import Classifier
from pipeline.config import ModelConfig, OptimizerConfig, Params, TrainConfig, flatten, load_params
from pipeline.errors import ConfigError
from pipeline.files import atomic_path, write_json, write_text
from pipeline.model import build_mlp, draw_architecture, keras_loss, make_optimizer, weights_sha256
from pipeline.search import trial as search_trial
from pipeline.splits import Split, load_splits, training_targets
from pipeline.stage import run_stage
from pipeline.training import (
    Checkpoint,
    EpochCheckpointer,
    TrainingState,
    check_finite,
    fingerprint,
    fit,
    weight_penalty,
)

logger = logging.getLogger(__name__)

# Characters of the run name's list of changes: a run list column shows fewer.
MAX_RUN_NAME_CHANGES = 120


def train(
    training: Split,
    validation: Split,
    *,
    num_classes: int,
    task: str,
    model_config: ModelConfig,
    optimizer_config: OptimizerConfig,
    train_config: TrainConfig,
    seed: int,
    scaling: str | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    checkpoint: Checkpoint | None = None,
    run_id: str | None = None,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Build, compile and fit the MLP, resuming from `checkpoint` when it holds a saved state; return the model and
    {metric: [value per epoch]}. `scaling` is dataset.scaling, which the model's first layer applies (None: none)."""
    # Seeded here, right before the first random draw: anything that ran before (MLflow picks run names with
    # Python's global `random`, which Keras also draws initializer seeds from) cannot change the weights.
    determinism.require(train_config.determinism)
    keras.utils.set_random_seed(seed)  # Python's, NumPy's and TensorFlow's generators
    tf.config.experimental.enable_op_determinism()
    model = build_mlp(training.inputs, num_classes=num_classes, task=task, config=model_config, scaling=scaling)
    total_steps = math.ceil(len(training.labels) / train_config.batch_size) * train_config.epochs
    optimizer = make_optimizer(optimizer_config, schedule=train_config.learning_rate_schedule, total_steps=total_steps)
    model.compile(optimizer=optimizer, loss=keras_loss(train_config.loss), metrics=["accuracy"])
    # Weight decay is a divergence's likely cause when its penalty is already out of range at the initial weights.
    penalty = weight_penalty(model)
    state = checkpoint.restore(model) if checkpoint else TrainingState()
    if state.epochs_done:
        logger.info("resuming after epoch %d of %d from %s", state.epochs_done, train_config.epochs, checkpoint.path)
    state.run_id = run_id
    early_stopping = None
    if train_config.early_stopping_patience:
        early_stopping = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=train_config.early_stopping_patience, restore_best_weights=True
        )
    # Order matters: NaN and early stopping decide before the checkpoint is saved, the caller's callbacks see it saved.
    checkpointer = EpochCheckpointer(checkpoint, state, early_stopping)
    targets = {"loss": train_config.loss, "task": task, "num_classes": num_classes}
    validation_data = (validation.inputs, training_targets(validation.labels, **targets))
    start = time.perf_counter()
    fit(
        model,
        training.inputs,
        training_targets(training.labels, **targets),
        batch_size=train_config.batch_size,
        seed=seed,
        initial_epoch=state.epochs_done,
        epochs=train_config.epochs,
        validation=validation_data if len(validation.labels) else None,
        callbacks=[*filter(None, [early_stopping]), checkpointer, *(callbacks or [])],
        jit_compile=train_config.jit_compile and train_config.determinism == "host",
    )
    logger.info("fitted in %.1f s", time.perf_counter() - start)  # benchmarks/training_speed.py reads it
    check_finite(state.history, training.inputs, model_config, optimizer_config, penalty)
    return model, state.history


def train_with_params(params: Params, training: Split, validation: Split, **options):
    """train() with every setting taken from params.yaml; `options` are train()'s callbacks, checkpoint, run_id."""
    return train(
        training,
        validation,
        num_classes=params.dataset.num_classes,
        task=params.dataset.task,
        model_config=params.model,
        optimizer_config=params.optimizer,
        train_config=params.train,
        seed=params.seed,
        scaling=params.dataset.scaling,
        **options,
    )


def write_history(history: dict[str, list[float]], path: Path) -> None:
    table = pd.DataFrame(history)
    table.index += 1  # epochs count from 1
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index_label="epoch", float_format="%.6g")


def model_summary(model: keras.Model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    return "\n".join(lines) + "\n"


def write_architecture(model: keras.Model) -> None:
    """The summary, the definition Keras rebuilds the network from (Sequential.from_config), a diagram; all logged."""
    write_text(paths.SUMMARY_FILE, model_summary(model))
    write_json(paths.MODEL_CONFIG_FILE, model.get_config())
    draw_architecture(model, paths.ARCHITECTURE_FILE)
    for path in (paths.SUMMARY_FILE, paths.MODEL_CONFIG_FILE, paths.ARCHITECTURE_FILE):
        mlflow.log_artifact(str(path), artifact_path="architecture")


def log_model(model: keras.Model, example_inputs: np.ndarray, class_names: list[str]) -> str:
    """Log the classifier (pipeline.classifier around MODEL_FILE), which takes raw inputs and answers with class
    names, with its signature and an input example; return its URI (models:/<model id>). The evaluate stage
    registers it once its test metrics are logged."""
    # The example's type is the signature's: uint8 pixels, or a table's float32 values, as the data holds them.
    signature = infer_signature(example_inputs, Classifier(model, class_names).predict(None, example_inputs))
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=Path(classifier.__file__),
        artifacts={classifier.KERAS_MODEL: str(paths.MODEL_FILE)},
        model_config={"class_names": class_names},
        signature=signature,
        input_example=example_inputs,
        # Listed, not inferred: inference re-loads the model in a subprocess, and would pick TensorFlow's GPU build.
        pip_requirements=[
            f"tensorflow-cpu=={tf.__version__}",
            *(f"{package.__name__}=={package.__version__}" for package in (keras, mlflow, pd)),
        ],
    )
    return info.model_uri


def run_name(overrides: list[str]) -> str:
    """What the run changed, readable in the MLflow UI's run list: DVC's experiment name, then the overrides that
    compose conf/ into it with their keys' group left out, e.g. `sgd-dropout (optimizer=sgd dropout_rate=0.2)`."""
    # `model.dropout_rate=0.2` -> `dropout_rate=0.2`; group choices (`optimizer=sgd`), `+key` and `~key` stay.
    changes = " ".join(re.sub(r"^([\w.]+\.)(\w+=)", r"\2", override) for override in overrides) or "defaults"
    if len(changes) > MAX_RUN_NAME_CHANGES:  # the lineage record keeps them all
        changes = changes[: MAX_RUN_NAME_CHANGES - 1] + "…"
    experiment = os.environ.get("DVC_EXP_NAME")
    return f"{experiment} ({changes})" if experiment else changes


def chosen_params(params: Params) -> dict:
    """The params a user sets, as MLflow params: unset values, the raw files' names, sizes and checksums (in the
    lineage record and the dataset inputs) and the class names (the evaluate stage's table) would bury them."""
    values = flatten(params.model_dump(exclude={"dataset": {"files", "class_names"}}))
    return {key: value for key, value in values.items() if value is not None}


def record_inputs(run: mlflow.ActiveRun, params: Params, splits: dict[str, Split]) -> None:
    """What a new run records before training: the params, the config file, the lineage and the datasets."""
    # MLflow 3 opens an experiment without this tag in its GenAI view, which hides the model registry.
    tracking.set_experiment_tag(run.info.experiment_id, "mlflow.experimentKind", "custom_model_development")
    tracking.set_experiment_tag(  # the description MLflow shows above the runs; a user's stays
        run.info.experiment_id,
        "mlflow.note.content",
        "Keras MLPs trained by this pipeline's `dvc repro` and `dvc exp run`, one run each: its name says what "
        "differs from the default configuration, its description begins with its test accuracy. The evaluate "
        "stage registers each model; the alias @champion marks the best on the full test set.",
        keep=True,
    )
    mlflow.log_params(chosen_params(params))
    mlflow.log_artifact(str(paths.PARAMS_FILE), artifact_path="config")
    record = lineage.log_new_run_lineage(params.dataset.name, params.dataset.files)
    mlflow.set_tag("mlflow.runName", run_name(record["config"]["overrides"]))
    source = lineage.dataset_source(params.dataset.name, params.dataset.files, params.dataset.urls)
    tracking.log_datasets(splits, dataset_name=params.dataset.name, source=source, context="training")


def train_and_log(params: Params, training: Split, validation: Split) -> keras.Model:
    """Train inside an MLflow run that records params, lineage, metrics and the model; after a crash, training
    resumes from its checkpoint and continues the same run."""
    splits = {"train": training, "validation": validation}
    settings = params.model_dump(include={"seed", "model", "optimizer", "train"}) | search_trial.checkpoint_owner()
    key = fingerprint(settings, [array for split in splits.values() for array in split], Path(__file__).parent)
    with Checkpoint(tracking.repository_root(), key) as checkpoint:
        saved = checkpoint.load()
        resumed_run = saved[0].run_id if saved and tracking.run_exists(saved[0].run_id) else None
        # A search trial's tags (none unless `mlp search` runs this) make a new run the study run's child.
        # Named by DVC's experiment name until record_inputs adds what the run changed.
        tags = search_trial.run_tags()
        with tracking.pipeline_run(params.mlflow.experiment_name, run_id=resumed_run, tags=tags) as run:
            run_id = run.info.run_id
            logger.info("MLflow run %s%s", run_id, " (continued after a crash)" if resumed_run else "")
            if not resumed_run:
                record_inputs(run, params, splits)
            log_epoch = tracking.epoch_logger(run_id, checkpointed=saved[0].history if resumed_run else {})
            model, history = train_with_params(
                params,
                training,
                validation,
                callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=log_epoch), *search_trial.callbacks()],
                checkpoint=checkpoint,
                run_id=run_id,
            )
            with atomic_path(paths.MODEL_FILE) as temporary:  # never a half-written model
                model.save(temporary)
            write_history(history, paths.HISTORY_FILE)
            write_architecture(model)
            mlflow.log_param("model.parameter_count", model.count_params())
            mlflow.set_tag("model.weights_sha256", weights_sha256(model))
            tracking.write_run_file(run, model_uri=log_model(model, training.inputs[:5], params.dataset.class_names))
        checkpoint.remove()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the MLP on data/processed and log the run to MLflow.")
    parser.add_argument(
        "--hash-only",
        action="store_true",
        help="train, print the weights' sha256 and exit: no files written, no MLflow run (for repeatability checks)",
    )
    arguments = parser.parse_args()
    params = load_params()
    determinism.enter(params.train.determinism)
    processed = paths.processed_directory(params.dataset.name)
    training, validation = load_splits(processed, ["train", "validation"], params.dataset)
    if params.train.batch_size > len(training.labels):  # params.yaml alone cannot know the row count
        raise ConfigError(
            f"params.yaml: train.batch_size = {params.train.batch_size} is larger than the {len(training.labels)} rows "
            f"of {processed / 'train.npz'}; use at most {len(training.labels)}"
        )
    if arguments.hash_only:
        model, _ = train_with_params(params, training, validation)
        print(weights_sha256(model))
        return
    model = train_and_log(params, training, validation)
    logger.info("trained %d parameters; weights sha256 %s", model.count_params(), weights_sha256(model))


if __name__ == "__main__":
    run_stage(main)
