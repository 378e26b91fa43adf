"""A DVC pipeline that trains Keras multilayer perceptrons and records every run in MLflow."""

import os

# TensorFlow's C++ start-up notices (CPU instruction sets, oneDNN) drown the
# stage logs; warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# What the pipeline downloads from MLflow are small files (a lineage record, a
# model): a progress bar for each is noise in the logs.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# The pipeline draws its figures headless: set Matplotlib's backend once, for
# every module, before any of them imports pyplot.
os.environ["MPLBACKEND"] = "Agg"
