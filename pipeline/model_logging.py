"""The trained Keras model into MLflow: logged with its signature and an input example, and registered.

The model scales its raw inputs itself, so the served model takes what the
dataset's files hold: pixels 0 to 255, a table's measurements.
"""

from __future__ import annotations

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import infer_signature


def log_model(model: keras.Model, example_inputs: np.ndarray) -> str:
    """Log the model with its signature and an input example; return its URI (models:/<model id>).

    Registering it is the evaluate stage's part, once the model's test metrics are logged."""
    # The example's type is the signature's: uint8 pixels, or a table's float32 values, as the data holds them.
    # Calling the model: `predict` would build and trace a prediction function for five rows.
    signature = infer_signature(example_inputs, model(example_inputs, training=False).numpy())
    # The tensorflow flavor: it saves Keras 3 models as .keras files too, and
    # (unlike mlflow.keras in this release) stores the input example correctly.
    info = mlflow.tensorflow.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example_inputs,
        # Listed rather than inferred: inference re-loads the model in a
        # subprocess, and would pick the GPU build of TensorFlow.
        pip_requirements=[
            f"tensorflow-cpu=={tf.__version__}",
            f"keras=={keras.__version__}",
            f"mlflow=={mlflow.__version__}",
        ],
    )
    return info.model_uri
