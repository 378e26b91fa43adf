"""The pieces of a deterministic, resumable Keras fit: the input pipeline and the callbacks.

The training data is shuffled with a permutation seeded by (seed, epoch), not by
a random stream that runs on from epoch to epoch: epoch k sees the same order
whether training started at epoch 1 or resumed at epoch k. Together with
pipeline.checkpoints this makes resumed training bitwise identical to
uninterrupted training.
"""

from __future__ import annotations

import math

import keras
import mlflow
import numpy as np
import tensorflow as tf

from pipeline.checkpoints import Checkpoint, TrainingState
from pipeline.errors import PipelineError
from pipeline.tracking import client


class TrainingDiverged(PipelineError):
    """The loss became inf or nan: the run must fail and register nothing."""


def shuffled_batches(
    inputs: np.ndarray, targets: np.ndarray, *, batch_size: int, seed: int, first_epoch: int, epochs: int
) -> tf.data.Dataset:
    """Batches for epochs first_epoch..epochs-1 in one stream, each epoch in its own seeded order."""
    inputs, targets = tf.constant(inputs), tf.constant(targets)
    count = int(inputs.shape[0])

    def epoch_order(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    return (
        tf.data.Dataset.range(first_epoch, epochs)
        .flat_map(epoch_order)
        .map(lambda index: (tf.gather(inputs, index), tf.gather(targets, index)))
        .prefetch(tf.data.AUTOTUNE)
    )


def steps_per_epoch(count: int, batch_size: int) -> int:
    return math.ceil(count / batch_size)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose counters and best weights survive a resume."""

    def __init__(self, *, restored: dict | None, best_weights: list[np.ndarray] | None, **options):
        super().__init__(**options)
        self._restored, self._restored_weights = restored, best_weights

    def on_train_begin(self, logs=None) -> None:
        super().on_train_begin(logs)  # resets the counters
        if self._restored:
            self.wait, self.best, self.best_epoch = (
                self._restored["wait"],
                self._restored["best"],
                self._restored["best_epoch"],
            )
            self.best_weights = self._restored_weights

    def state(self) -> dict[str, float | int]:
        return {"wait": self.wait, "best": float(self.best), "best_epoch": self.best_epoch}


class EpochCheckpointer(keras.callbacks.Callback):
    """Saves the complete training state after every epoch; keeps the history of all epochs."""

    def __init__(
        self, checkpoint: Checkpoint | None, state: TrainingState, early_stopping: ResumableEarlyStopping | None
    ):
        super().__init__()
        self.checkpoint, self.early_stopping = checkpoint, early_stopping
        self.history = {name: list(values) for name, values in state.history.items()}
        self.run_id = state.run_id

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        losses = self.history.get("loss", [])
        if losses and not math.isfinite(losses[-1]):
            self.model.stop_training = True
            return
        # An epoch that made early stopping stop is not saved: a resume runs it again and stops the same way.
        if self.checkpoint is None or self.model.stop_training:
            return
        stopping = self.early_stopping.state() if self.early_stopping else None
        best = self.early_stopping.best_weights if self.early_stopping else None
        state = TrainingState(epochs_done=epoch + 1, history=self.history, run_id=self.run_id, early_stopping=stopping)
        self.checkpoint.save(self.model, state, best_weights=best)


def check_finite(history: dict[str, list[float]], *, learning_rate: float) -> None:
    for epoch, loss in enumerate(history.get("loss", []), start=1):
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"training diverged: the loss became {loss} in epoch {epoch}; nothing was registered. "
                f"Lower optimizer.learning_rate (now {learning_rate:g}) or check the input scaling"
            )


def epoch_logger(run_id: str) -> keras.callbacks.Callback:
    """Logs each epoch's metrics with the epoch as step, once: after a resume, epochs already logged are skipped."""
    logged = {metric.step for metric in client().get_metric_history(run_id, "loss")}

    def log(epoch: int, logs: dict) -> None:
        if epoch + 1 not in logged:
            mlflow.log_metrics({name: float(value) for name, value in logs.items()}, step=epoch + 1)

    return keras.callbacks.LambdaCallback(on_epoch_end=log)


def backfill_epochs(run_id: str, history: dict[str, list[float]]) -> None:
    """Log the epochs a crashed process checkpointed but did not get to log."""
    logged = {metric.step for metric in client().get_metric_history(run_id, "loss")}
    for epoch in range(1, len(history.get("loss", [])) + 1):
        if epoch not in logged:
            mlflow.log_metrics({name: values[epoch - 1] for name, values in history.items()}, step=epoch)
