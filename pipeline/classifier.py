"""The classifier MLflow logs, registers and serves: the saved Keras model, and `class_ids`, the one rule that
turns its outputs into classes. Each row gets its class name, its probability and every class's probability.

MLflow logs this file as the model's code ("models from code"): nothing is pickled, and the file runs where
the model is served, so it imports no other module of this project.
"""

import keras
import mlflow
import numpy as np
import pandas as pd

KERAS_MODEL = "keras_model"  # the .keras file's name among the logged model's artifacts


def class_ids(outputs: np.ndarray) -> np.ndarray:
    """The class each row of the model's outputs predicts, the one decision rule of the project: for one sigmoid
    unit (binary task) class 1 when its probability is above one half, as Keras' accuracy counts it; else the most
    probable class."""
    outputs = np.asarray(outputs)
    if outputs.shape[1] == 1:
        return (outputs[:, 0] > 0.5).astype(np.int64)
    return outputs.argmax(axis=1)


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Every class's probability per row: one sigmoid unit's p becomes (1 - p, p)."""
    outputs = np.asarray(outputs, dtype=np.float64)
    return np.concatenate([1.0 - outputs, outputs], axis=1) if outputs.shape[1] == 1 else outputs


class Classifier(mlflow.pyfunc.PythonModel):
    """Raw inputs in (pixels 0-255, table rows), a row per input out: its class name, that class's
    probability, and probabilities (class name -> probability)."""

    def __init__(self, model: keras.Model | None = None, class_names: list[str] | None = None):
        self.model, self.class_names = model, class_names

    def load_context(self, context) -> None:
        self.model = keras.models.load_model(context.artifacts[KERAS_MODEL], safe_mode=True)
        self.class_names = list(context.model_config["class_names"])

    # Typed np.ndarray: MLflow then checks requests against the logged signature (uint8 pixels, a width).
    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        outputs = self.model.predict(np.asarray(model_input, dtype=np.float32), verbose=0)
        ids, probabilities = class_ids(outputs), class_probabilities(outputs)
        return pd.DataFrame(
            {
                "class": [self.class_names[i] for i in ids],
                "probability": probabilities[np.arange(len(ids)), ids],
                "probabilities": [dict(zip(self.class_names, map(float, row), strict=True)) for row in probabilities],
            }
        )


mlflow.models.set_model(Classifier())
