"""Training saves its complete state at every epoch end and, resumed after a crash,
ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_digits

from pipeline.config import ModelConfig, OptimizerConfig, TrainConfig
from pipeline.model import weights_sha256
from pipeline.splits import Split
from pipeline.train import train
from pipeline.training import Checkpoint, TrainingDiverged

MODEL = ModelConfig(
    hidden_units=[32, 16], activation="relu", dropout_rate=0.3, kernel_initializer="glorot_uniform", l2_weight_decay=0.0
)


class Crash(Exception):
    """Stands in for the process dying after an epoch's checkpoint was written."""


class CrashAfterEpoch:
    def __init__(self, epoch: int):
        import keras

        class Callback(keras.callbacks.Callback):
            def on_epoch_end(inner, epoch_index, logs=None):  # noqa: N805 - the enclosing instance is `self`
                if epoch_index + 1 == epoch:
                    raise Crash

        self.callback = Callback()


def tiny_split():
    images, labels = synthetic_digits(300, seed=1)
    inputs = images.reshape(300, -1).astype(np.float32) / 255
    return Split(inputs[:250], labels[:250].astype(np.int64)), Split(inputs[250:], labels[250:].astype(np.int64))


def fit(
    checkpoint=None, callbacks=None, epochs=5, patience=None, learning_rate=0.01, optimizer="adam", model=MODEL, nan=0
):
    training, validation = tiny_split()
    training.inputs[:nan] = np.nan  # the first `nan` rows
    return train(
        training,
        validation,
        num_classes=10,
        task="multiclass",
        model_config=model,
        optimizer_config=OptimizerConfig(name=optimizer, learning_rate=learning_rate),
        train_config=TrainConfig(
            loss="categorical_crossentropy", batch_size=32, epochs=epochs, early_stopping_patience=patience
        ),
        seed=3,
        callbacks=callbacks,
        checkpoint=checkpoint,
    )


@pytest.mark.parametrize("patience", [None, 1])
def test_resumed_training_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, patience):
    uninterrupted, history = fit(patience=patience, epochs=8)
    with Checkpoint(tmp_path, "a" * 64) as checkpoint:
        with pytest.raises(Crash):
            fit(checkpoint, callbacks=[CrashAfterEpoch(3).callback], patience=patience, epochs=8)
        assert checkpoint.load()[0].epochs_done == 3
    with Checkpoint(tmp_path, "a" * 64) as checkpoint:
        resumed, resumed_history = fit(checkpoint, patience=patience, epochs=8)
    assert weights_sha256(resumed) == weights_sha256(uninterrupted)
    assert resumed_history == history  # every epoch's metrics, none twice


def test_a_checkpoint_of_another_fingerprint_is_never_resumed(tmp_path):
    with Checkpoint(tmp_path, "a" * 64) as checkpoint, pytest.raises(Crash):
        fit(checkpoint, callbacks=[CrashAfterEpoch(2).callback])
    with Checkpoint(tmp_path, "b" * 64) as other:
        assert other.load() is None
        # The stale checkpoint is gone: nobody holds it.
        assert [path.name for path in (tmp_path / ".checkpoints").glob("train-*") if path.is_dir()] == []


def test_no_lock_file_stays_behind_and_a_held_checkpoint_is_not_shared(tmp_path):
    folder = tmp_path / ".checkpoints"
    with Checkpoint(tmp_path, "a" * 64) as checkpoint:
        with Checkpoint(tmp_path, "a" * 64) as second:
            assert checkpoint.enabled and not second.enabled  # another training of the same fingerprint
        assert checkpoint.lock.is_locked
        checkpoint.directory.mkdir()  # a crash leaves the checkpoint to resume from
    assert not list(folder.glob("*.lock"))
    (folder / "train-cccccccccccccccc.lock").touch()  # left by a process killed before removing it
    with Checkpoint(tmp_path, "b" * 64) as other:
        # Made for another fingerprint: the checkpoint and the lock file go.
        assert sorted(path.name for path in folder.iterdir()) == [other.directory.name + ".lock"]
    assert not list(folder.iterdir())


def test_a_diverging_loss_stops_training_with_a_clear_error():
    with pytest.raises(TrainingDiverged, match=r"the loss became nan in epoch 1.*Lower optimizer.learning_rate"):
        fit(learning_rate=1e30, optimizer="sgd", epochs=3)


def test_a_divergence_names_a_huge_weight_decay_or_non_finite_inputs_as_its_cause():
    with pytest.raises(TrainingDiverged) as diverged:
        fit(model=MODEL.model_copy(update={"l2_weight_decay": 1e300}), epochs=2)
    assert "Lower model.l2_weight_decay (now 1e+300): the penalty it adds to the loss is already " in str(diverged)
    assert "at the initial weights, beyond float32's range" in str(diverged)
    with pytest.raises(TrainingDiverged) as diverged:
        fit(model=MODEL.model_copy(update={"l2_weight_decay": 20.0}), learning_rate=0.1, optimizer="sgd", epochs=3)
    message = str(diverged.value)
    assert "Lower model.l2_weight_decay (now 20) or optimizer.learning_rate (now 0.1): their product is 2;" in message
    with pytest.raises(TrainingDiverged, match="The training inputs hold 3,920 NaN or infinite values"):
        fit(nan=5, epochs=2)
