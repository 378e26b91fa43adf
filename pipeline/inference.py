"""The trained MLP as NumPy arrays: read from its .keras file and applied without TensorFlow.

The evaluate stage scores the test split with it: an MLP's forward pass is a few
matrix products, and not starting TensorFlow saves that stage several seconds
per run. It computes what Keras computes for the layers, activations and losses
that pipeline.model builds (tests/test_inference.py compares the two), and
refuses any other layer with the name of what it found.

A .keras file is a zip archive of `config.json` (the architecture and the
compiled loss) and `model.weights.h5`, where Keras stores each layer's
variables under `layers/<snake_case class name>[_<n>]/vars/<index>` in layer
order. Both are read as data (JSON, HDF5 arrays); nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy.special import erf, expit, log_softmax

# The layers pipeline.model builds; Dropout is the identity at inference.
SUPPORTED_LAYERS = ("InputLayer", "Dense", "Dropout")

ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "tanh": np.tanh,
    "sigmoid": expit,
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "gelu": lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2))),
    "softmax": lambda x: _softmax(x),
}


def _softmax(x: np.ndarray) -> np.ndarray:
    exponentials = np.exp(x - x.max(axis=-1, keepdims=True))
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class DenseLayer:
    kernel: np.ndarray  # (inputs, units), float32
    bias: np.ndarray  # (units,)
    activation: str
    l2: float  # the kernel's L2 factor, 0 when it has none


@dataclass(frozen=True)
class SavedMLP:
    """The Dense layers of a trained MLP, in order, and the loss it was compiled with."""

    layers: tuple[DenseLayer, ...]
    loss: str  # the Keras loss name: sparse_categorical_crossentropy, binary_crossentropy or mse

    @property
    def units(self) -> list[int]:
        """Input width, then each layer's units: [784, 256, 256, 10]."""
        return [self.layers[0].kernel.shape[0], *(layer.kernel.shape[1] for layer in self.layers)]

    def count_params(self) -> int:
        return sum(layer.kernel.size + layer.bias.size for layer in self.layers)

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """The output layer's values (class probabilities, or one positive probability) per input row."""
        return ACTIVATIONS[self.layers[-1].activation](self.logits(inputs)).astype(np.float32)

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """The output layer's values before its activation."""
        values = inputs.astype(np.float32, copy=False)
        for layer in self.layers[:-1]:
            values = ACTIVATIONS[layer.activation](values @ layer.kernel + layer.bias).astype(np.float32)
        return values @ self.layers[-1].kernel + self.layers[-1].bias

    def loss_value(self, inputs: np.ndarray, targets: np.ndarray) -> float:
        """The mean loss over the rows plus the L2 penalties, as Keras' model.evaluate reports it."""
        logits = self.logits(inputs).astype(np.float64)
        activation = self.layers[-1].activation
        # Keras computes cross-entropy from the logits when the output is a softmax or a sigmoid.
        if self.loss == "sparse_categorical_crossentropy" and activation == "softmax":
            per_row = -log_softmax(logits, axis=-1)[np.arange(len(targets)), targets.astype(int)]
        elif self.loss == "binary_crossentropy" and activation == "sigmoid":
            truth = targets.reshape(logits.shape).astype(np.float64)
            per_row = (np.maximum(logits, 0) - logits * truth + np.log1p(np.exp(-np.abs(logits)))).mean(axis=-1)
        elif self.loss == "mse":
            output = ACTIVATIONS[activation](logits)
            per_row = ((targets.reshape(output.shape) - output) ** 2).mean(axis=-1)
        else:
            raise ValueError(f"loss {self.loss} after a {activation} output is not one pipeline.model builds")
        penalty = sum(layer.l2 * float(np.square(layer.kernel, dtype=np.float64).sum()) for layer in self.layers)
        return float(per_row.mean() + penalty)

    def accuracy(self, probabilities: np.ndarray, labels: np.ndarray) -> float:
        """Keras' "accuracy" for this loss: argmax against the class, or above one half for one sigmoid unit."""
        predicted = (probabilities[:, 0] > 0.5).astype(int) if probabilities.shape[1] == 1 else probabilities.argmax(1)
        return float((predicted == labels).mean())

    def weights_sha256(self) -> str:
        """The same digest as pipeline.model.weights_sha256 of the Keras model these layers came from."""
        return weights_digest(array for layer in self.layers for array in (layer.kernel, layer.bias))


def weights_digest(arrays: Iterable[np.ndarray]) -> str:
    """sha256 over weight arrays in layer order (dtype, shape and bytes of each).

    Independent of how or when the model file was written: two trainings that
    end with the same weights have the same digest.
    """
    digest = hashlib.sha256()
    for weights in arrays:
        digest.update(f"{weights.dtype.str}{weights.shape}".encode())
        digest.update(weights.tobytes(order="C"))
    return digest.hexdigest()


KERAS_LOSSES = ("sparse_categorical_crossentropy", "binary_crossentropy", "mse")


def load_mlp(path: Path) -> SavedMLP:
    """The MLP saved in the .keras file at `path`; ValueError naming what is wrong if it is not one."""
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        weights = archive.read("model.weights.h5")
    layer_configs = config["config"]["layers"]
    unsupported = sorted({layer["class_name"] for layer in layer_configs} - set(SUPPORTED_LAYERS))
    if unsupported:
        raise ValueError(f"layers {', '.join(unsupported)} are not an MLP's: expected only {SUPPORTED_LAYERS}")
    dense = [layer["config"] for layer in layer_configs if layer["class_name"] == "Dense"]
    with h5py.File(io.BytesIO(weights), "r") as store:
        layers = tuple(
            DenseLayer(
                kernel=np.asarray(store[f"layers/{_saved_name(index)}/vars/0"]),
                bias=np.asarray(store[f"layers/{_saved_name(index)}/vars/1"]),
                activation=_activation(layer),
                l2=_l2(layer.get("kernel_regularizer")),
            )
            for index, layer in enumerate(dense)
        )
    return SavedMLP(layers=layers, loss=_loss_name(config.get("compile_config", {}).get("loss")))


def from_keras(model: Any) -> SavedMLP:
    """The same arrays taken from a Keras model in memory (for callers that just trained it)."""
    layers = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in SUPPORTED_LAYERS:
            raise ValueError(f"layer {layer.name} is a {kind}, not an MLP's: expected only {SUPPORTED_LAYERS}")
        if kind == "Dense":
            kernel, bias = layer.get_weights()
            regularizer = layer.kernel_regularizer.get_config() if layer.kernel_regularizer else None
            layers.append(DenseLayer(kernel, bias, layer.activation.__name__, _l2({"config": regularizer})))
    return SavedMLP(layers=tuple(layers), loss=_loss_name(model.loss))


def _saved_name(index: int) -> str:
    # Keras numbers repeated classes in a container: dense, dense_1, dense_2, ...
    return "dense" if index == 0 else f"dense_{index}"


def _activation(layer: dict) -> str:
    name = layer.get("activation")
    if name not in ACTIVATIONS:
        raise ValueError(f"layer {layer.get('name')} has activation {name!r}: expected one of {sorted(ACTIVATIONS)}")
    return name


def _l2(regularizer: dict | None) -> float:
    config = (regularizer or {}).get("config") or {}
    return float(config.get("l2", 0.0))


def _loss_name(loss: Any) -> str:
    if loss not in KERAS_LOSSES:
        raise ValueError(f"the model was compiled with loss {loss!r}: expected one of {KERAS_LOSSES}")
    return loss
