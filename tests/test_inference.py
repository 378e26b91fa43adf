"""pipeline.inference computes what Keras computes: predictions, loss (with L2) and accuracy, for every
activation, loss and task that pipeline.model builds, from the .keras file and from the model in memory."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest

from pipeline.config import ModelConfig
from pipeline.inference import from_keras, load_mlp
from pipeline.model import build_mlp, keras_loss, weights_sha256
from pipeline.splits import training_targets

FEATURES, ROWS = 20, 64
ACTIVATIONS = ["relu", "tanh", "sigmoid", "softmax", "elu", "gelu", "linear"]
# (task, config loss): every combination the params schema accepts.
LOSSES = [
    ("multiclass", "categorical_crossentropy"),
    ("multiclass", "mse"),
    ("binary", "binary_crossentropy"),
    ("binary", "mse"),
]


def trained_a_little(activation: str, task: str, loss: str, l2: float) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    keras.utils.set_random_seed(7)
    config = ModelConfig(
        hidden_units=[16, 8],
        activation=activation,
        dropout_rate=0.2,
        kernel_initializer="glorot_uniform",
        l2_weight_decay=l2,
    )
    num_classes = 3 if task == "multiclass" else 2
    model = build_mlp(FEATURES, num_classes=num_classes, task=task, config=config)
    model.compile(optimizer="adam", loss=keras_loss(loss), metrics=["accuracy"])
    generator = np.random.default_rng(1)
    inputs = generator.normal(size=(ROWS, FEATURES)).astype(np.float32) * 3
    labels = generator.integers(0, num_classes, size=ROWS)
    targets = training_targets(labels, loss=loss, task=task, num_classes=num_classes)
    # A few steps, so that the outputs are far from the initial, nearly uniform ones.
    model.fit(inputs, targets, epochs=5, batch_size=16, verbose=0)
    return model, inputs, labels


# Three cases in the fast suite (each loss kind once); all 28 in the slow one.
FAST_CASES = {
    ("relu", "multiclass", "categorical_crossentropy"),
    ("tanh", "multiclass", "mse"),
    ("gelu", "binary", "binary_crossentropy"),
}
CASES = [
    pytest.param(activation, task, loss, marks=() if (activation, task, loss) in FAST_CASES else pytest.mark.slow)
    for activation in ACTIVATIONS
    for task, loss in LOSSES
]


@pytest.mark.parametrize("activation, task, loss", CASES)
def test_inference_matches_keras(tmp_path, activation, task, loss):
    model, inputs, labels = trained_a_little(activation, task, loss, l2=1e-3 if activation == "relu" else 0.0)
    targets = training_targets(labels, loss=loss, task=task, num_classes=3 if task == "multiclass" else 2)
    keras_loss_value, keras_accuracy = model.evaluate(inputs, targets, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)

    for saved in (load_mlp(path), from_keras(model)):
        probabilities = saved.predict(inputs)
        np.testing.assert_allclose(probabilities, model.predict(inputs, verbose=0), rtol=1e-5, atol=1e-6)
        assert saved.loss_value(inputs, targets) == pytest.approx(keras_loss_value, rel=1e-5, abs=1e-7)
        assert saved.accuracy(probabilities, labels) == pytest.approx(keras_accuracy, abs=1e-6)
        assert saved.weights_sha256() == weights_sha256(model)
        assert saved.units == [FEATURES, 16, 8, 3 if task == "multiclass" else 1]
        assert saved.count_params() == model.count_params()


def test_the_l2_penalty_is_in_the_loss(tmp_path):
    model, inputs, labels = trained_a_little("relu", "multiclass", "categorical_crossentropy", l2=0.5)
    plain = from_keras(model)
    penalty = 0.5 * sum(float(np.square(layer.kernel).sum()) for layer in plain.layers)
    assert penalty > 0.1
    assert plain.loss_value(inputs, labels) == pytest.approx(model.evaluate(inputs, labels, verbose=0)[0], rel=1e-5)


def test_a_model_that_is_not_an_mlp_is_refused_by_name(tmp_path):
    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    model.compile(loss="mse")
    path = tmp_path / "model.keras"
    model.save(path)
    with pytest.raises(ValueError, match="BatchNormalization"):
        load_mlp(path)
    with pytest.raises(ValueError, match="BatchNormalization"):
        from_keras(model)


def test_an_unknown_activation_in_the_file_is_refused(tmp_path):
    model, _, _ = trained_a_little("relu", "multiclass", "categorical_crossentropy", l2=0.0)
    path, edited = tmp_path / "model.keras", tmp_path / "edited.keras"
    model.save(path)
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(edited, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                config["config"]["layers"][1]["config"]["activation"] = "swish"
                data = json.dumps(config).encode()
            target.writestr(item, data)
    with pytest.raises(ValueError, match="swish"):
        load_mlp(edited)
