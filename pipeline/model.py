"""The multilayer perceptron and its optimizer, built from config values."""

from __future__ import annotations

from pathlib import Path

import keras
import matplotlib.pyplot as plt

from pipeline.config import ModelConfig, OptimizerConfig
from pipeline.figures import save_figure
from pipeline.inference import weights_digest


def build_mlp(input_size: int, *, num_classes: int, task: str, config: ModelConfig) -> keras.Model:
    """Dense hidden layers (each followed by Dropout when the rate is > 0), then the output layer:
    a softmax over the classes, or for a binary task one sigmoid unit."""

    regularizer = keras.regularizers.L2(config.l2_weight_decay) if config.l2_weight_decay > 0 else None
    layers = [keras.Input(shape=(input_size,), name="pixels")]
    for index, units in enumerate(config.hidden_units, start=1):
        layers.append(
            keras.layers.Dense(
                units,
                activation=config.activation,
                kernel_initializer=_initializer(config.kernel_initializer),
                kernel_regularizer=regularizer,
                name=f"hidden_{index}",
            )
        )
        if config.dropout_rate > 0:
            layers.append(keras.layers.Dropout(config.dropout_rate, name=f"dropout_{index}"))
    if task == "binary":
        layers.append(keras.layers.Dense(1, activation="sigmoid", name="positive_probability"))
    else:
        layers.append(keras.layers.Dense(num_classes, activation="softmax", name="class_probabilities"))
    return keras.Sequential(layers, name="mlp")


def make_optimizer(
    config: OptimizerConfig, *, schedule: str = "constant", total_steps: int | None = None
) -> keras.optimizers.Optimizer:
    """The optimizer at `config.learning_rate`; with schedule "cosine" the rate falls to 0
    along a half cosine over `total_steps` optimizer steps (Keras' CosineDecay, per step:
    the optimizer's step count is in its checkpointed state, so a resumed run continues it)."""
    learning_rate = config.learning_rate
    if schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total_steps)
    if config.name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if config.name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=config.momentum or 0.0)
    if config.name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=learning_rate, momentum=config.momentum or 0.0)
    raise ValueError(f"unknown optimizer {config.name!r}: expected adam, sgd or rmsprop")


def _initializer(name: str) -> str | keras.initializers.Initializer:
    # The Keras 1/2 tutorials' "uniform" and "normal" meant these fixed ranges,
    # not the fan-scaled Glorot/He initializers.
    if name == "uniform":
        return keras.initializers.RandomUniform(minval=-0.05, maxval=0.05)
    if name == "normal":
        return keras.initializers.RandomNormal(mean=0.0, stddev=0.05)
    return name


def keras_loss(loss: str) -> str:
    """The Keras loss for config value `loss`, given that labels are class indices."""
    # Categorical cross-entropy on one-hot labels is sparse categorical
    # cross-entropy on the class indices, without a 10x larger label array.
    if loss == "categorical_crossentropy":
        return "sparse_categorical_crossentropy"
    return loss


def draw_architecture(model: keras.Model, path: Path) -> None:
    """A diagram of the network: one box per layer, top to bottom, with its output size and parameters."""
    boxes = [f"input: {model.input_shape[-1]} features"]
    for layer in model.layers:
        config = layer.get_config()
        if "units" in config:
            text = f"{layer.name}: Dense {config['units']}, {config['activation']}"
        elif "rate" in config:
            text = f"{layer.name}: Dropout {config['rate']:g}"
        else:
            text = f"{layer.name}: {type(layer).__name__}"
        boxes.append(f"{text}\n{layer.count_params():,} parameters")
    height = 1.0 + 0.9 * len(boxes)
    figure, axis = plt.subplots(figsize=(5.5, height))
    axis.set_xlim(0, 1)
    axis.set_ylim(0, len(boxes))
    axis.axis("off")
    for index, text in enumerate(boxes):
        y = len(boxes) - index - 0.5
        color = "#dddddd" if index == 0 else "#cfe2f3" if "Dense" in text else "#fce5cd"
        axis.text(
            0.5,
            y,
            text,
            ha="center",
            va="center",
            fontsize=10,
            bbox={"boxstyle": "round,pad=0.5", "facecolor": color, "edgecolor": "#555555"},
        )
        if index < len(boxes) - 1:
            axis.annotate("", xy=(0.5, y - 0.62), xytext=(0.5, y - 0.38), arrowprops={"arrowstyle": "->"})
    axis.set_title(f"{model.name}: {model.count_params():,} parameters", fontsize=11)
    save_figure(figure, path)


def weights_sha256(model: keras.Model) -> str:
    """The digest of the model's weights (pipeline.inference.weights_digest): the run's identity."""
    return weights_digest(model.get_weights())
