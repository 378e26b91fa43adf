"""Stage `evaluate`: score the saved Keras model on the test split and finish the train stage's MLflow run.

Reads params `dataset`, `train.loss` and `mlflow.registered_model_name`, data/model/, the test split and
reports/training_history.csv; writes reports/metrics.json (the DVC metrics) and the reports dvc.yaml lists
for this stage, logs them to the run, then registers the run's model and decides the champion (pipeline.registry).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
)

from pipeline import paths, registry
from pipeline.classifier import class_ids
from pipeline.config import load_params
from pipeline.errors import DataError
from pipeline.figures import save_figure
from pipeline.files import atomic_path, write_json, write_text
from pipeline.lineage import REPRODUCES_VARIABLE, add_lock_md5s, dataset_source
from pipeline.model import weights_sha256
from pipeline.splits import load_splits, training_targets
from pipeline.stage import run_stage
from pipeline.tracking import TEST_SET_TAG, client, log_datasets, log_new_metrics, pipeline_run, read_run_file

logger = logging.getLogger(__name__)


def evaluate(
    model: keras.Model,
    inputs: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: list[str],
    targets: np.ndarray | None = None,
) -> dict:
    """Test loss and accuracy, macro and per-class precision/recall/F1 (by class name), and the predictions.
    `targets`: what the loss compares the output with, where not the labels (training_targets)."""
    # The loss as Keras computes it for training (L2 penalties included).
    loss = model.evaluate(inputs, labels if targets is None else targets, batch_size=1024, verbose=0, return_dict=True)
    predictions = class_ids(model.predict(inputs, batch_size=1024, verbose=0))
    classes = list(range(len(class_names)))
    *values, support = precision_recall_fscore_support(labels, predictions, labels=classes, zero_division=0)
    scores = dict(zip(("precision", "recall", "f1"), values, strict=True))
    return {
        "test": {
            "loss": float(loss["loss"]),
            "accuracy": float(np.mean(predictions == labels)),
            **{f"{name}_macro": float(values.mean()) for name, values in scores.items()},
        },
        "per_class": {
            name: {score: float(values[index]) for score, values in scores.items()} | {"support": int(support[index])}
            for index, name in enumerate(class_names)
        },
        "predictions": predictions,
        "report_text": classification_report(
            labels, predictions, labels=classes, target_names=class_names, digits=4, zero_division=0
        ),
        "confusion_matrix": confusion_matrix(labels, predictions, labels=classes),
    }


def write_confusion_csv(labels: np.ndarray, predictions: np.ndarray, path: Path, *, class_names: list[str]) -> None:
    """One row per test example, actual and predicted class by name (`dvc plots`' confusion template)."""
    names = np.array(class_names)
    with atomic_path(path) as temporary:
        pd.DataFrame({"actual": names[labels], "predicted": names[predictions]}).to_csv(temporary, index=False)


def plot_confusion_matrix(matrix: np.ndarray, path: Path, *, class_names: list[str]) -> None:
    figure, axis = plt.subplots(figsize=(7, 6))
    ConfusionMatrixDisplay(matrix, display_labels=class_names).plot(
        ax=axis, cmap="Blues", colorbar=False, xticks_rotation="vertical", values_format="d"
    )
    axis.set_title("Confusion matrix, test split")
    save_figure(figure, path)


def plot_learning_curves(history: pd.DataFrame, path: Path) -> None:
    """Loss and accuracy per epoch from the train stage's history: training, and validation where there is a split."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        names = {metric: "training", f"val_{metric}": "validation"}
        curves = history.filter(items=list(names)).rename(columns=names)
        curves.plot(ax=axis, marker="o", xlabel="epoch", ylabel=metric)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    figure.suptitle("Learning curves")
    save_figure(figure, path)


def load_model(path: Path) -> keras.Model:
    if not path.exists():
        raise DataError(f"{path} not found: {paths.rerun_hint('train')}")
    try:
        # safe_mode (the default) refuses to deserialize Python code from the file.
        return keras.models.load_model(path, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - any failure to read the model means a damaged file
        raise DataError(f"{path} is corrupt ({type(error).__name__}: {error}); {paths.repair_hint('train')}") from None


def write_reports(results: dict, labels: np.ndarray, history: pd.DataFrame, metrics: dict, *, class_names) -> None:
    """The metrics and the reports, logged to the open MLflow run under evaluation/; the plots at its root."""
    write_json(paths.METRICS_FILE, metrics)
    # Per-class scores as one file, not 3 metrics per class: the metrics tab keeps the curves people look at.
    write_json(paths.PER_CLASS_METRICS_FILE, results["per_class"])
    write_confusion_csv(labels, results["predictions"], paths.CONFUSION_CSV, class_names=class_names)
    plot_confusion_matrix(results["confusion_matrix"], paths.CONFUSION_PNG, class_names=class_names)
    plot_learning_curves(history, paths.LEARNING_CURVES_PNG)
    write_text(paths.CLASSIFICATION_REPORT_FILE, results["report_text"])
    # Once, as a table: as a parameter the list would take a line per class on MLflow's compare page.
    mlflow.log_table({"class_index": list(range(len(class_names))), "class_name": class_names}, "class_names.json")
    reports = (paths.METRICS_FILE, paths.PER_CLASS_METRICS_FILE, paths.CONFUSION_CSV, paths.CLASSIFICATION_REPORT_FILE)
    for path in reports:
        mlflow.log_artifact(str(path), artifact_path="evaluation")
    # At the root: MLflow's compare page puts only top-level artifacts side by side.
    for path in (paths.LEARNING_CURVES_PNG, paths.CONFUSION_PNG):
        mlflow.log_artifact(str(path))


def run_summary(model: keras.Model, logged: dict[str, str], *, dataset_name: str, accuracy: float, scope: str) -> str:
    """One line, accuracy first: how the model scored, the network and how it was trained, the latter from the
    run's `logged` params (this stage does not read, nor re-run for, the training settings)."""
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    units = [str(model.input_shape[-1]), *(str(layer.units) for layer in dense)]
    return (
        f"test accuracy {accuracy:.2%} on {'the full' if scope == 'full' else 'a subset of the'} {dataset_name} "
        f"test set: MLP {'-'.join(units)} "
        f"({logged.get('model.activation')}, dropout {logged.get('model.dropout_rate')}), "
        f"{logged.get('optimizer.name')} lr {logged.get('optimizer.learning_rate')}, "
        f"{logged.get('train.epochs')} epoch{'' if logged.get('train.epochs') == '1' else 's'} "
        f"of batch {logged.get('train.batch_size')}"
    )


def register_model(record: dict, summary: str, tags: dict[str, str], *, name: str) -> None:
    """Register the run's model (once per run) and decide the champion; a reproduction registers nothing."""
    if reproduces := os.environ.get(REPRODUCES_VARIABLE):
        logger.info("%s: nothing registered: this run reproduces run %s", name, reproduces)
        return
    version = registry.register(
        client(), name, run_id=record["run_id"], model_uri=record["model_uri"], description=summary, tags=tags
    )
    logger.info("%s version %s: %s", name, version, registry.promote_if_best(client(), name, version))


def main() -> None:
    params = load_params()
    dataset = params.dataset
    record = read_run_file()
    run_id = record["run_id"]
    (test_split,) = load_splits(paths.processed_directory(dataset.name), ["test"], dataset)
    model = load_model(paths.MODEL_FILE)
    targets = training_targets(
        test_split.labels, loss=params.train.loss, task=dataset.task, num_classes=dataset.num_classes
    )
    # dataset.max_test_samples scores a subset: its accuracy is not the dataset's.
    scope = "full" if dataset.max_test_samples is None else "subset"

    with pipeline_run(run_id=run_id):
        history = pd.read_csv(paths.HISTORY_FILE, index_col="epoch")
        if history.empty:
            raise DataError(f"{paths.HISTORY_FILE} holds no epochs: {paths.rerun_hint('train')}")
        results = evaluate(model, *test_split, class_names=dataset.class_names, targets=targets)
        accuracy = results["test"]["accuracy"]
        # What `dvc exp show` and `dvc metrics diff` show: the few numbers that decide between runs, and the ids
        # that tie the row to its weights and MLflow run.
        metrics = {
            "test": {name: results["test"][name] for name in ("accuracy", "loss", "f1_macro")},
            # What runs are chosen by without looking at the test split, where there is a validation split.
            **({"val_accuracy": float(history["val_accuracy"].iloc[-1])} if "val_accuracy" in history else {}),
            "weights_sha256": weights_sha256(model),
            "mlflow_run_id": run_id,
        }
        write_reports(results, test_split.labels, history, metrics, class_names=dataset.class_names)
        log_new_metrics(run_id, {f"test_{name}": value for name, value in results["test"].items()})
        add_lock_md5s(run_id)  # dvc.lock now holds the upstream stages as they ran for this model
        source = dataset_source(dataset.name, dataset.files, dataset.urls)
        log_datasets({"test": test_split}, dataset_name=dataset.name, source=source, context="test")
        run = client().get_run(run_id)
        summary = run_summary(model, run.data.params, dataset_name=dataset.name, accuracy=accuracy, scope=scope)
        # What `mlp diff` and the registry compare runs by: their examples pair only on the same test set.
        test_set = hashlib.sha256(test_split.inputs.tobytes() + test_split.labels.tobytes()).hexdigest()
        mlflow.set_tags({TEST_SET_TAG: test_set, "mlflow.note.content": summary})  # the note: the run's description
    # Registered once the run has FINISHED with its test metrics: no version points at an unfinished run,
    # and a crash before this leaves none (dvc repro then runs this stage again).
    tags = {
        "dataset": dataset.name,
        registry.ACCURACY_TAG: f"{accuracy:.6f}",
        registry.TEST_SET_TAG: test_set,
        registry.SCOPE_TAG: scope,
        "run_id": run_id,
        "commit": run.data.tags.get("git.commit", "unknown"),
    }
    register_model(record, summary, tags, name=params.mlflow.registered_model_name)
    logger.info("test accuracy %.4f, test loss %.4f", accuracy, results["test"]["loss"])


if __name__ == "__main__":
    run_stage(main)
