"""A DVC pipeline that trains Keras multilayer perceptrons and records every run in MLflow."""

import os

# TensorFlow's C++ log: its start-up notices, and the error-looking line tf.data logs under op determinism for an
# attribute it then ignores ("NodeDef mentions attribute use_unbounded_threadpool"), drown the stage logs. Errors
# that stop a run reach Python as exceptions; TF_CPP_MIN_LOG_LEVEL=0 shows the C++ log again.
# (The oneDNN notice still prints: turning oneDNN off to hide it would change the weights on CPUs that use it.)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# What the pipeline downloads from MLflow are small files (a lineage record, a
# model): a progress bar for each is noise in the logs.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# A failing tracking server stops the stage within a minute, not after minutes (docs/crash-safety.md).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
# The pipeline draws its figures headless: set Matplotlib's backend once, for
# every module, before any of them imports pyplot.
os.environ["MPLBACKEND"] = "Agg"
