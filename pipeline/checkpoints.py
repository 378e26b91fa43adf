"""Crash-safe training: the complete training state saved at every epoch end, resumed after a crash.

A checkpoint holds every variable of the model (weights, and the dropout
layers' random-seed state) and of the optimizer (moments, iteration count),
the epochs done with their metrics, the early-stopping state and the MLflow run
it belongs to. With the per-epoch seeded shuffle of pipeline.train, training
resumed from epoch k ends with exactly the weights an uninterrupted run gets.

Checkpoints live in .checkpoints/ at the repository root: DVC deletes a
stage's outputs before it runs the stage, so they cannot live in data/model/.
Each is named by a fingerprint of what the training depends on (the train
params, the training data, the code and the packages): a checkpoint made for
another configuration or other data is never resumed. A lock file keeps two
processes from sharing one.

Why not `keras.callbacks.BackupAndRestore`: it hands the epoch to `model.fit`
alone (through the model's private `_initial_epoch`), which pipeline.training
does not use; it writes the weights in place and then the epoch in a second
file, so a kill between the two resumes epoch k's count with epoch k+1's
weights; and it holds none of what a resume also needs here: the history, the
early-stopping counters and best weights, the MLflow run and the fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from filelock import FileLock, Timeout

from pipeline.files import atomic_path
from pipeline.paths import CHECKPOINTS_DIRECTORY, REQUIREMENTS_LOCK

logger = logging.getLogger(__name__)

# One file, renamed into place: the state and the variables can never disagree.
CHECKPOINT_FILE = "checkpoint.npz"


@dataclass(frozen=True)
class TrainingState:
    """What a checkpoint records besides the variables."""

    epochs_done: int
    history: dict[str, list[float]]
    run_id: str | None
    early_stopping: dict[str, float | int] | None


def fingerprint(settings: dict, arrays: list[np.ndarray], code_directory: Path) -> str:
    """sha256 over the settings, the arrays' bytes, the project's code and the pinned packages."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for array in arrays:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).data)
    for path in sorted(code_directory.rglob("*.py")) + [REQUIREMENTS_LOCK]:
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


class Checkpoint:
    """The checkpoint folder of one fingerprint, locked for this process while training runs."""

    def __init__(self, root: Path, key: str):
        self.directory = root / CHECKPOINTS_DIRECTORY / f"train-{key[:16]}"
        self._lock = FileLock(str(self.directory) + ".lock")
        self.enabled = False

    def __enter__(self) -> Checkpoint:
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
            self.enabled = True
        except Timeout:
            logger.warning("%s is in use by another training: training without checkpoints", self.directory)
        self._drop_stale()
        return self

    def __exit__(self, *exception) -> None:
        if self.enabled:
            self._lock.release()

    def load(self) -> tuple[TrainingState, dict[str, np.ndarray]] | None:
        """The saved state and variables, or None when there is nothing to resume."""
        path = self.directory / CHECKPOINT_FILE
        if not (self.enabled and path.exists()):
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                variables = {name: stored[name] for name in stored.files}
            state = TrainingState(**json.loads(str(variables.pop("state"))))
        except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as error:
            logger.warning("ignoring the unreadable checkpoint %s (%s)", path, error)
            return None
        return state, variables

    def save(self, model: keras.Model, state: TrainingState, *, best_weights: list[np.ndarray] | None) -> None:
        if not self.enabled:
            return
        variables = {f"model_{index}": v.numpy() for index, v in enumerate(model.variables)}
        variables |= {f"optimizer_{index}": v.numpy() for index, v in enumerate(model.optimizer.variables)}
        variables |= {f"best_{index}": weights for index, weights in enumerate(best_weights or [])}
        variables["state"] = np.array(json.dumps(state.__dict__))
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.directory / CHECKPOINT_FILE) as temporary:
            np.savez(temporary, **variables)

    def remove(self) -> None:
        if self.enabled:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _drop_stale(self) -> None:
        """Checkpoints of other fingerprints no training holds: made for another config or data."""
        for other in self.directory.parent.glob("train-*"):
            if other == self.directory or other.suffix == ".lock":
                continue
            lock = FileLock(str(other) + ".lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                logger.info("removing checkpoint %s: made for another configuration or other data", other)
                shutil.rmtree(other, ignore_errors=True)
            finally:
                lock.release()


def restore_variables(model: keras.Model, variables: dict[str, np.ndarray]) -> None:
    """Put saved values back into a freshly built and compiled model and its optimizer."""
    model.optimizer.build(model.trainable_variables)
    for prefix, targets in (("model", model.variables), ("optimizer", model.optimizer.variables)):
        saved = [name for name in variables if name.startswith(f"{prefix}_")]
        if len(saved) != len(targets):
            raise ValueError(f"the checkpoint holds {len(saved)} {prefix} variables, the model has {len(targets)}")
        for index, variable in enumerate(targets):
            variable.assign(variables[f"{prefix}_{index}"])


def best_weights(variables: dict[str, np.ndarray]) -> list[np.ndarray] | None:
    """Early stopping's best weights saved beside the variables, if any."""
    count = sum(name.startswith("best_") for name in variables)
    return [variables[f"best_{index}"] for index in range(count)] or None
