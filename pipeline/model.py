"""The multilayer perceptron, the one implementation of the network: it takes the dataset's raw values and
scales them in its first layer, so the trained and the served model are the same (pipeline.classifier holds
the decision rule).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np

from pipeline.config import ModelConfig, OptimizerConfig
from pipeline.figures import save_figure

OPTIMIZERS = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}


def build_mlp(
    training_inputs: np.ndarray, *, num_classes: int, task: str, config: ModelConfig, scaling: str | None
) -> keras.Model:
    """The input scaling (None: none), Dense hidden layers each followed by Dropout when the rate is > 0, then
    a softmax over the classes or, for a binary task, one sigmoid unit."""
    regularizer = keras.regularizers.L2(config.l2_weight_decay) if config.l2_weight_decay > 0 else None
    layers = [keras.Input(shape=(training_inputs.shape[1],), name="features")]
    if scaling is not None:
        layers.append(input_scaling(scaling, training_inputs))
    for index, units in enumerate(config.hidden_units, start=1):
        layers.append(
            keras.layers.Dense(
                units,
                activation=config.activation,
                # Keras' "uniform" and "normal": the Keras 1/2 tutorials' fixed ranges (+-0.05, sd 0.05).
                kernel_initializer=config.kernel_initializer,
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


def input_scaling(scaling: str, training_inputs: np.ndarray) -> keras.layers.Layer:
    """The layer that scales raw inputs (dataset.scaling): the only place scaling lives."""
    if scaling == "unit_interval":
        return keras.layers.Rescaling(1 / 255, name="unit_interval")  # pixels 0-255 -> [0, 1]
    if scaling == "standardize":
        # Zero mean and unit variance per feature, fitted on the training split only: validation
        # and test must not leak into it. The mean and variance are saved with the model.
        layer = keras.layers.Normalization(name="standardize")
        layer.adapt(training_inputs.astype(np.float32))
        return layer
    raise ValueError(f"unknown scaling {scaling!r}: expected unit_interval or standardize")


def make_optimizer(
    config: OptimizerConfig, *, schedule: str = "constant", total_steps: int | None = None
) -> keras.optimizers.Optimizer:
    """The optimizer at `config.learning_rate`; with schedule "cosine" the rate falls to 0 along a half cosine over
    `total_steps` steps (per step: the optimizer's step count is checkpointed, so a resumed run continues it)."""
    learning_rate = config.learning_rate
    if schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total_steps)
    momentum = {} if config.momentum is None else {"momentum": config.momentum}  # sgd's and rmsprop's only
    return OPTIMIZERS[config.name](learning_rate=learning_rate, **momentum)


def keras_loss(loss: str) -> str:
    """The Keras loss for config value `loss`, given that labels are class indices: categorical cross-entropy on
    one-hot labels is sparse categorical cross-entropy on the indices, without a 10x larger label array."""
    return "sparse_categorical_crossentropy" if loss == "categorical_crossentropy" else loss


def draw_architecture(model: keras.Model, path: Path) -> None:
    """A diagram of the network: one box per layer, top to bottom, with its output size and parameters."""
    boxes = [(f"input: {model.input_shape[-1]} features", "#dddddd")]
    for layer in model.layers:
        config = layer.get_config()
        if "units" in config:
            text, color = f"Dense {config['units']}, {config['activation']}", "#cfe2f3"
        elif "rate" in config:
            text, color = f"Dropout {config['rate']:g}", "#fce5cd"
        elif "scale" in config:
            text, color = f"Rescaling x 1/{1 / config['scale']:.6g}", "#d9ead3"
        else:
            text, color = type(layer).__name__, "#d9ead3"
        boxes.append((f"{layer.name}: {text}\n{layer.count_params():,} parameters", color))
    figure, axis = plt.subplots(figsize=(5.5, 1.0 + 0.9 * len(boxes)))
    axis.set(xlim=(0, 1), ylim=(0, len(boxes)))
    axis.axis("off")
    for index, (text, color) in enumerate(boxes):
        y = len(boxes) - index - 0.5
        box = {"boxstyle": "round,pad=0.5", "facecolor": color, "edgecolor": "#555555"}
        axis.text(0.5, y, text, ha="center", va="center", fontsize=10, bbox=box)
        if index < len(boxes) - 1:
            axis.annotate("", xy=(0.5, y - 0.62), xytext=(0.5, y - 0.38), arrowprops={"arrowstyle": "->"})
    axis.set_title(f"{model.name}: {model.count_params():,} parameters", fontsize=11)
    save_figure(figure, path)


def weights_sha256(model: keras.Model) -> str:
    """sha256 over the weights in layer order (dtype, shape and bytes of each), whatever file holds them."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(f"{weights.dtype.str}{weights.shape}".encode())
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()
