"""The MLP built from config, and a real (tiny) Keras training."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import synthetic_digits

from pipeline.classifier import class_ids, class_probabilities
from pipeline.config import ModelConfig, OptimizerConfig, TrainConfig
from pipeline.model import build_mlp, draw_architecture, keras_loss, make_optimizer
from pipeline.splits import Split, training_targets
from pipeline.train import model_summary, train, write_history

# One row of MNIST's width: build_mlp takes its input width (and a scaling's statistics) from training inputs.
PIXELS = np.zeros((1, 784), np.uint8)

DEFAULT_MODEL = ModelConfig(
    hidden_units=[256, 256],
    activation="relu",
    dropout_rate=0.45,
    kernel_initializer="glorot_uniform",
    l2_weight_decay=0,
)


def test_default_network_has_atienzas_269322_parameters():
    model = build_mlp(PIXELS, num_classes=10, task="multiclass", config=DEFAULT_MODEL, scaling="unit_interval")
    assert model.count_params() == 269_322
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Rescaling", "Dense", "Dropout", "Dense", "Dropout", "Dense"]
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.45, 0.45]
    assert model.layers[-1].activation.__name__ == "softmax"


def test_no_dropout_layers_at_rate_zero_and_l2_on_every_hidden_layer():
    config = DEFAULT_MODEL.model_copy(update={"dropout_rate": 0.0, "l2_weight_decay": 0.001, "hidden_units": [8, 8, 8]})
    model = build_mlp(PIXELS, num_classes=10, task="multiclass", config=config, scaling=None)
    hidden = [layer for layer in model.layers if layer.name.startswith("hidden")]
    assert len(model.layers) == 4
    assert all(layer.kernel_regularizer.l2 == pytest.approx(0.001) for layer in hidden)


@pytest.mark.parametrize(("name", "low", "high"), [("uniform", -0.05, 0.05), ("zeros", 0.0, 0.0)])
def test_fixed_range_initializers(name, low, high):
    keras.utils.set_random_seed(0)
    config = DEFAULT_MODEL.model_copy(update={"kernel_initializer": name})
    model = build_mlp(PIXELS, num_classes=10, task="multiclass", config=config, scaling=None)
    kernel = model.layers[0].kernel.numpy()
    assert low <= kernel.min() and kernel.max() <= high


def test_normal_initializer_has_standard_deviation_005():
    keras.utils.set_random_seed(0)
    config = DEFAULT_MODEL.model_copy(update={"kernel_initializer": "normal"})
    model = build_mlp(PIXELS, num_classes=10, task="multiclass", config=config, scaling=None)
    assert model.layers[0].kernel.numpy().std() == pytest.approx(0.05, rel=0.02)


@pytest.mark.parametrize(
    ("config", "kind", "momentum"),
    [
        (OptimizerConfig(name="adam", learning_rate=0.002), keras.optimizers.Adam, None),
        (OptimizerConfig(name="sgd", learning_rate=0.1, momentum=0.9), keras.optimizers.SGD, 0.9),
        (OptimizerConfig(name="rmsprop", learning_rate=0.001, momentum=0.5), keras.optimizers.RMSprop, 0.5),
    ],
)
def test_optimizer_by_name(config, kind, momentum):
    optimizer = make_optimizer(config)
    assert isinstance(optimizer, kind)
    assert float(optimizer.learning_rate) == pytest.approx(config.learning_rate)
    if momentum is not None:
        assert optimizer.momentum == pytest.approx(momentum)


def test_cosine_schedule_decays_the_rate_to_zero_over_all_steps():
    optimizer = make_optimizer(OptimizerConfig(name="adam", learning_rate=0.002), schedule="cosine", total_steps=100)
    rates = []
    for step in (0, 50, 100, 150):
        optimizer.iterations.assign(step)  # the rate follows the optimizer's step count
        rates.append(float(optimizer.learning_rate))
    assert rates == pytest.approx([0.002, 0.001, 0, 0], abs=1e-9)


def test_training_with_the_cosine_schedule_ends_at_rate_zero():
    constant, _ = tiny_training(seed=0)
    model, history = tiny_training(seed=0, learning_rate_schedule="cosine")
    assert int(model.optimizer.iterations) == 8 * 3  # 250 images in batches of 32, 3 epochs
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)
    assert history["loss"][-1] < history["loss"][0]
    assert not np.array_equal(constant.get_weights()[0], model.get_weights()[0])


def tiny_training(seed: int, **train_options):
    images, labels = synthetic_digits(300, seed=1)
    inputs = images.reshape(300, -1).astype(np.float32) / 255
    return train(
        Split(inputs[:250], labels[:250]),
        Split(inputs[250:], labels[250:]),
        num_classes=10,
        task="multiclass",
        model_config=DEFAULT_MODEL.model_copy(update={"hidden_units": [32]}),
        optimizer_config=OptimizerConfig(name="adam", learning_rate=0.01),
        train_config=TrainConfig(
            **{
                "loss": "categorical_crossentropy",
                "batch_size": 32,
                "epochs": 3,
                "early_stopping_patience": None,
                **train_options,
            }
        ),
        seed=seed,
    )


def test_training_learns_and_records_every_epoch():
    model, history = tiny_training(seed=0)
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history["loss"]) == 3
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_accuracy"][-1] > 0.5  # the synthetic classes are easy to tell apart


def test_training_is_repeatable_from_the_seed():
    first, _ = tiny_training(seed=7)
    again, _ = tiny_training(seed=7)
    other, _ = tiny_training(seed=8)
    for a, b in zip(first.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.get_weights()[0], other.get_weights()[0])


def test_training_with_xla_steps_learns_and_repeats_its_weights():
    first, history = tiny_training(seed=7, jit_compile=True)
    again, _ = tiny_training(seed=7, jit_compile=True)
    for a, b in zip(first.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_accuracy"][-1] > 0.5


@pytest.mark.parametrize("jit_compile", [True, False])
@pytest.mark.parametrize("steps_per_call", [2, 64])  # 3 full batches: 2 calls, the second padded; or 1 call
def test_an_epoch_has_the_weights_of_its_steps_one_by_one(steps_per_call, jit_compile, monkeypatch):
    import tensorflow as tf

    from pipeline import training
    from pipeline.training import epoch_loop, epoch_order

    monkeypatch.setattr(training, "STEPS_PER_CALL", steps_per_call)

    images, labels = synthetic_digits(100, seed=1)
    inputs = tf.constant(images.reshape(100, -1).astype(np.float32) / 255)
    targets = tf.constant(training_targets(labels, loss="categorical_crossentropy", task="multiclass", num_classes=10))
    order = epoch_order(100, seed=3, epoch=0)  # 3 batches of 32, then 4 rows
    models = []
    for _ in range(2):
        keras.utils.set_random_seed(5)
        tf.config.experimental.enable_op_determinism()  # as train() runs its steps
        model = build_mlp(inputs.numpy(), num_classes=10, task="multiclass", config=DEFAULT_MODEL, scaling=None)
        optimizer = make_optimizer(OptimizerConfig(name="adam", learning_rate=0.01))
        model.compile(optimizer=optimizer, loss=keras_loss("categorical_crossentropy"))
        model.optimizer.build(model.trainable_variables)
        models.append(model)
    step = tf.function(models[0].train_step, jit_compile=jit_compile)
    for start in range(0, 100, 32):
        batch = order[start : start + 32]
        step((tf.gather(inputs, batch), tf.gather(targets, batch)))
    run_epoch = epoch_loop(models[1], batch_size=32, jit_compile=jit_compile)
    run_epoch(inputs, targets, order)
    assert int(models[1].optimizer.iterations) == int(models[0].optimizer.iterations) == 4
    for a, b in zip(models[0].get_weights(), models[1].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_stops_before_the_last_epoch():
    _, history = tiny_training(seed=0, epochs=40, early_stopping_patience=1)
    assert len(history["loss"]) < 40


def test_history_csv_has_one_row_per_epoch(tmp_path):
    write_history({"loss": [0.5, 0.25], "val_loss": [0.6, 0.3]}, tmp_path / "history.csv")
    assert (tmp_path / "history.csv").read_text().splitlines() == ["epoch,loss,val_loss", "1,0.5,0.6", "2,0.25,0.3"]


NUMPY_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "softmax": lambda x: (
        np.exp(x - x.max(axis=1, keepdims=True)) / np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True)
    ),
    "linear": lambda x: x,
}


@pytest.mark.parametrize("activation", sorted(NUMPY_ACTIVATIONS))
def test_hidden_activation_from_config(activation):
    keras.utils.set_random_seed(0)
    config = DEFAULT_MODEL.model_copy(update={"activation": activation, "hidden_units": [6], "dropout_rate": 0.0})
    model = build_mlp(np.zeros((1, 4)), num_classes=3, task="multiclass", config=config, scaling=None)
    inputs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    hidden = model.layers[0]
    kernel, bias = (weights.numpy() for weights in (hidden.kernel, hidden.bias))
    np.testing.assert_allclose(
        hidden(inputs).numpy(), NUMPY_ACTIVATIONS[activation](inputs @ kernel + bias), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    ("loss", "task", "keras_name"),
    [
        ("categorical_crossentropy", "multiclass", "sparse_categorical_crossentropy"),
        ("mse", "multiclass", "mse"),
        ("binary_crossentropy", "binary", "binary_crossentropy"),
        ("mse", "binary", "mse"),
    ],
)
def test_each_loss_trains(loss, task, keras_name):
    images, labels = synthetic_digits(300, seed=1)
    inputs = images.reshape(300, -1).astype(np.float32) / 255
    if task == "binary":
        labels = (labels >= 5).astype(np.int64)
    num_classes = 2 if task == "binary" else 10
    model, history = train(
        Split(inputs[:250], labels[:250]),
        Split(inputs[250:], labels[250:]),
        num_classes=num_classes,
        task=task,
        model_config=DEFAULT_MODEL.model_copy(update={"hidden_units": [32], "dropout_rate": 0.0}),
        optimizer_config=OptimizerConfig(name="adam", learning_rate=0.01),
        train_config=TrainConfig(loss=loss, batch_size=32, epochs=4, early_stopping_patience=None),
        seed=0,
    )
    assert keras_loss(loss) == keras_name
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_accuracy"][-1] > 0.6
    # The output layer follows the task: one sigmoid unit, or a softmax over the classes.
    assert model.output_shape == (None, 1 if task == "binary" else 10)


def test_mse_over_a_softmax_compares_with_one_hot_rows():
    targets = training_targets(np.array([2, 0]), loss="mse", task="multiclass", num_classes=3)
    np.testing.assert_array_equal(targets, [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(training_targets(np.array([1, 0]), loss="mse", task="binary", num_classes=2), [1, 0])
    np.testing.assert_array_equal(
        training_targets(np.array([2]), loss="categorical_crossentropy", task="multiclass", num_classes=3), [2]
    )


def test_architecture_artifacts_describe_the_network(tmp_path):
    model = build_mlp(PIXELS, num_classes=10, task="multiclass", config=DEFAULT_MODEL, scaling="unit_interval")
    rebuilt = keras.Sequential.from_config(model.get_config())
    assert [layer.name for layer in rebuilt.layers] == [layer.name for layer in model.layers]
    assert rebuilt.count_params() == 269_322
    draw_architecture(model, tmp_path / "architecture.png")
    assert (tmp_path / "architecture.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = model_summary(model)
    assert "hidden_1" in summary and "269,322" in summary


def test_evaluation_names_the_classes_everywhere(tmp_path):
    from pipeline.evaluate import evaluate, plot_confusion_matrix, write_confusion_csv

    config = DEFAULT_MODEL.model_copy(update={"hidden_units": [8]})
    model = build_mlp(PIXELS, num_classes=3, task="multiclass", config=config, scaling="unit_interval")
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    images, labels = synthetic_digits(30, seed=1)
    inputs, labels = images.reshape(30, -1), labels % 3
    names = ["cat", "dog", "bird"]
    results = evaluate(model, inputs, labels, class_names=names)
    assert list(results["per_class"]) == names
    assert all(name in results["report_text"] for name in names)
    write_confusion_csv(labels, results["predictions"], tmp_path / "confusion.csv", class_names=names)
    rows = (tmp_path / "confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and {row.split(",")[0] for row in rows[1:]} <= set(names)
    plot_confusion_matrix(results["confusion_matrix"], tmp_path / "confusion.png", class_names=names)
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("task", "loss"), [("multiclass", "mse"), ("binary", "binary_crossentropy")])
def test_evaluation_scores_the_saved_keras_model_as_keras_does(tmp_path, task, loss):
    """The test metrics are the saved model's, run by Keras: its loss (L2 included) and its own accuracy."""
    from sklearn.metrics import f1_score

    from pipeline.evaluate import evaluate, load_model

    images, labels = synthetic_digits(200, seed=2)
    inputs = images.reshape(200, -1)
    num_classes = 2 if task == "binary" else 10
    labels = labels % num_classes
    config = DEFAULT_MODEL.model_copy(update={"hidden_units": [16], "l2_weight_decay": 0.01, "dropout_rate": 0.2})
    model, _ = train(
        Split(inputs[:150], labels[:150]),
        Split(inputs[150:], labels[150:]),
        num_classes=num_classes,
        task=task,
        model_config=config,
        optimizer_config=OptimizerConfig(name="adam", learning_rate=0.01),
        train_config=TrainConfig(loss=loss, batch_size=32, epochs=2, early_stopping_patience=None),
        seed=0,
        scaling="unit_interval",
    )
    model.save(tmp_path / "model.keras")
    targets = training_targets(labels[150:], loss=loss, task=task, num_classes=num_classes)
    results = evaluate(
        load_model(tmp_path / "model.keras"),
        inputs[150:],
        labels[150:],
        targets=targets,
        class_names=[str(index) for index in range(num_classes)],
    )
    keras_scores = model.evaluate(inputs[150:], targets, verbose=0, return_dict=True)
    assert results["test"]["loss"] == pytest.approx(keras_scores["loss"], rel=1e-5)
    assert results["test"]["accuracy"] == pytest.approx(keras_scores["accuracy"], abs=1e-7)
    assert results["test"]["f1_macro"] == pytest.approx(f1_score(labels[150:], results["predictions"], average="macro"))


def test_one_rule_turns_outputs_into_classes():
    # One sigmoid unit: class 1 strictly above one half (Keras' binary accuracy counts it so).
    np.testing.assert_array_equal(class_ids(np.array([[0.2], [0.5], [0.5001]])), [0, 0, 1])
    np.testing.assert_array_equal(class_ids(np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]])), [1, 0])
    np.testing.assert_allclose(class_probabilities(np.array([[0.25]])), [[0.75, 0.25]])


def test_the_model_scales_raw_pixels_itself():
    """Pixels 0-255 in, the same outputs as the same network on pixels / 255."""
    images, _ = synthetic_digits(20, seed=3)
    pixels = images.reshape(20, -1)
    keras.utils.set_random_seed(0)
    scaled = build_mlp(pixels, num_classes=10, task="multiclass", config=DEFAULT_MODEL, scaling="unit_interval")
    keras.utils.set_random_seed(0)
    plain = build_mlp(pixels, num_classes=10, task="multiclass", config=DEFAULT_MODEL, scaling=None)
    np.testing.assert_allclose(
        scaled(pixels, training=False).numpy(), plain(pixels / 255.0, training=False).numpy(), rtol=1e-5, atol=1e-6
    )


def test_a_table_is_standardized_inside_the_model_with_the_training_statistics(tmp_path):
    rows = np.random.default_rng(0).normal(loc=[100.0, -3.0, 0.5], scale=[20.0, 0.1, 4.0], size=(500, 3))
    model = build_mlp(
        rows.astype(np.float32), num_classes=2, task="binary", config=DEFAULT_MODEL, scaling="standardize"
    )
    standardize = model.layers[0]
    assert type(standardize).__name__ == "Normalization"
    standardized = standardize(rows.astype(np.float32)).numpy()
    np.testing.assert_allclose(standardized.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(standardized.std(axis=0), 1, atol=1e-3)
    # The statistics are saved with the model: the loaded model takes raw rows too.
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded(rows[:5], training=False).numpy(), model(rows[:5], training=False).numpy())
