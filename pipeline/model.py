"""The multilayer perceptron and its optimizer, built from config values.

Keras is imported inside the functions so that modules which only need the
names (config validation, tests of other stages) do not pay for loading
TensorFlow.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from pipeline.config import ModelConfig, OptimizerConfig

if TYPE_CHECKING:
    import keras


def build_mlp(input_size: int, num_classes: int, config: ModelConfig, task: str = "multiclass") -> keras.Model:
    """Dense hidden layers (each followed by Dropout when the rate is > 0), then the output layer:
    a softmax over the classes, or for a binary task one sigmoid unit."""
    import keras

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


def make_optimizer(config: OptimizerConfig) -> keras.optimizers.Optimizer:
    import keras

    if config.name == "adam":
        return keras.optimizers.Adam(learning_rate=config.learning_rate)
    if config.name == "sgd":
        return keras.optimizers.SGD(learning_rate=config.learning_rate, momentum=config.momentum or 0.0)
    if config.name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=config.learning_rate, momentum=config.momentum or 0.0)
    raise ValueError(f"unknown optimizer {config.name!r}: expected adam, sgd or rmsprop")


def _initializer(name: str) -> str | keras.initializers.Initializer:
    import keras

    # The Keras 1/2 tutorials' "uniform" and "normal" meant these fixed ranges,
    # not the fan-scaled Glorot/He initializers.
    if name == "uniform":
        return keras.initializers.RandomUniform(minval=-0.05, maxval=0.05)
    if name == "normal":
        return keras.initializers.RandomNormal(mean=0.0, stddev=0.05)
    return name


def loss_for(task: str) -> str:
    # Integer labels: sparse categorical cross-entropy is categorical cross-entropy on one-hot labels.
    return "binary_crossentropy" if task == "binary" else "sparse_categorical_crossentropy"


def weights_sha256(model: keras.Model) -> str:
    """sha256 over the weight arrays in layer order (dtype, shape and bytes of each).

    Independent of how or when the model file was written: two trainings that
    end with the same weights have the same hash.
    """
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(f"{weights.dtype.str}{weights.shape}".encode())
        digest.update(weights.tobytes(order="C"))
    return digest.hexdigest()
