"""Where MLflow runs go, how a stage opens and closes one, and what it logs.

One MLflow run per pipeline execution: the train stage creates it and records
the run id next to the model; the evaluate stage reopens that run to add the
test metrics and plots. A stage that fails leaves the run FAILED, one that is
interrupted leaves it KILLED; neither leaves it RUNNING.

The default store is an SQLite file at the repository root, addressed by
absolute path. `dvc exp run --queue` and `--temp` run the stages in a copy
under .dvc/tmp/exps/; DVC passes the original repository's root in DVC_ROOT,
so those runs land in the same store. MLFLOW_TRACKING_URI overrides it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from pipeline.errors import PipelineError
from pipeline.files import write_json
from pipeline.paths import ARTIFACTS_DIRECTORY, RUN_FILE, STORE_FILE, rerun_hint
from pipeline.splits import Split

logger = logging.getLogger(__name__)


def repository_root() -> Path:
    # DVC sets DVC_ROOT for every stage command, to the original repository even
    # when the stage runs in a temporary copy.
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def default_tracking_uri() -> str:
    return f"sqlite:///{repository_root() / STORE_FILE}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def experiment_id(name: str) -> str:
    """The id of MLflow experiment `name`, created with artifacts beside the store if new."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)  # note: this also exports MLFLOW_TRACKING_URI
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # Explicit and absolute: MLflow's default (./mlruns) would follow the
    # working directory, which for queued experiments is a temporary copy.
    # Another store (a tracking server) keeps its own artifact root.
    location = (repository_root() / ARTIFACTS_DIRECTORY).as_uri() if uri == default_tracking_uri() else None
    return mlflow.create_experiment(name, artifact_location=location)


@contextmanager
def pipeline_run(
    experiment_name: str | None = None, run_id: str | None = None, tags: dict[str, str] | None = None
) -> Iterator[mlflow.ActiveRun]:
    """Start a new run in `experiment_name`, or reopen `run_id`; always end it with a final status."""
    if run_id is None:
        run = mlflow.start_run(
            experiment_id=experiment_id(experiment_name), run_name=os.environ.get("DVC_EXP_NAME"), tags=tags
        )
    else:
        mlflow.set_tracking_uri(tracking_uri())
        try:
            run = mlflow.start_run(run_id=run_id)
        except mlflow.exceptions.MlflowException as error:
            raise PipelineError(
                f"MLflow run {run_id} (from {RUN_FILE}) cannot be reopened in {tracking_uri()}: {error}. "
                "Re-run training with `dvc repro --force train`."
            ) from None
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def write_run_file(run: mlflow.ActiveRun) -> None:
    # No store path: this file is a versioned output and must not depend on where the repository lives.
    write_json(RUN_FILE, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id})


def read_run_id() -> str:
    try:
        return json.loads(RUN_FILE.read_text(encoding="utf-8"))["run_id"]
    except FileNotFoundError:
        raise PipelineError(f"{RUN_FILE} not found: {rerun_hint('train')}") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise PipelineError(f"{RUN_FILE} is not valid: expected JSON with a run_id; re-run the train stage") from None


def client() -> MlflowClient:
    return MlflowClient(tracking_uri())


def log_model(model: keras.Model, example_inputs: np.ndarray, *, registered_model_name: str) -> None:
    """Log the model with its signature and an input example, and register a new version of it."""
    signature = infer_signature(example_inputs, model.predict(example_inputs, verbose=0))
    # The tensorflow flavor: it saves Keras 3 models as .keras files too, and
    # (unlike mlflow.keras in this release) stores the input example correctly.
    mlflow.tensorflow.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example_inputs,
        registered_model_name=registered_model_name,
        # Listed rather than inferred: inference re-loads the model in a
        # subprocess, and would pick the GPU build of TensorFlow.
        pip_requirements=[
            f"tensorflow-cpu=={tf.__version__}",
            f"keras=={keras.__version__}",
            f"mlflow=={mlflow.__version__}",
        ],
    )


def log_datasets(splits: dict[str, Split], *, dataset_name: str, source: str, context: str) -> None:
    """Log each non-empty split as an MLflow dataset input (MLflow computes its digest)."""
    for name, split in splits.items():
        if len(split.labels):
            dataset = mlflow.data.from_numpy(
                split.inputs, targets=split.labels, name=f"{dataset_name}-{name}", source=source
            )
            mlflow.log_input(dataset, context="validation" if name == "validation" else context)
