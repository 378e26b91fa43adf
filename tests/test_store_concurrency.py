"""Eight `dvc exp run --temp` started at once on a project whose MLflow store does not exist yet: the
first users of the store race to create and migrate it, and every experiment must still land in it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from conftest import BIN_DIRECTORY, TINY_DATASET, make_tiny_project, run
from mlflow.tracking import MlflowClient

EXPERIMENTS = 8


def user_environment() -> dict[str, str]:
    """The environment conftest.run gives a command: this virtual environment first on PATH, nothing
    inherited that would redirect the store or pretend to be inside a DVC stage."""
    environment = {**os.environ, "PATH": f"{BIN_DIRECTORY}{os.pathsep}{os.environ.get('PATH', '')}"}
    for variable in ("MLFLOW_TRACKING_URI", "MLP_DATA_MIRROR", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        environment.pop(variable, None)
    return environment


@pytest.mark.slow
def test_experiments_started_at_once_on_a_missing_store_all_land_in_it(tmp_path_factory, tiny_dataset_server):
    path = make_tiny_project(tmp_path_factory.mktemp("project"), tiny_dataset_server)
    run(["dvc", "repro"], cwd=path)  # the data, in DVC's cache for the temporary copies
    (path / "mlflow.db").unlink()
    shutil.rmtree(path / "mlartifacts")
    # -S composes conf/ afresh: choose the tiny dataset and one epoch again. --wait-for-lock: DVC's
    # repository lock is held while each run is set up and collected, and by default DVC gives up on it
    # after 3 seconds, long before eight of them are through; that is DVC's lock, not the store's.
    overrides = [f"dataset={TINY_DATASET}", "train.epochs=1"]
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            [
                "dvc",
                "--wait-for-lock",
                "exp",
                "run",
                "--temp",
                *(f"-S{override}" for override in [*overrides, f"seed={seed}"]),
            ],
            cwd=path,
            env=user_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seed in range(1, EXPERIMENTS + 1)
    ]
    outputs = [process.communicate(timeout=1800)[0] for process in processes]
    elapsed = time.monotonic() - started
    print(f"{EXPERIMENTS} concurrent `dvc exp run --temp` took {elapsed:.1f} s")
    failed = [
        (process.returncode, output) for process, output in zip(processes, outputs, strict=True) if process.returncode
    ]
    assert not failed, (
        f"{len(failed)} of {EXPERIMENTS} failed; the first (status {failed[0][0]}):\n{failed[0][1][-3000:]}"
    )

    client = MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("keras-mlp")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == EXPERIMENTS
    assert {mlflow_run.info.status for mlflow_run in runs} == {"FINISHED"}
    assert sorted(int(mlflow_run.data.params["seed"]) for mlflow_run in runs) == list(range(1, EXPERIMENTS + 1))
    for mlflow_run in runs:
        assert {"accuracy", "val_accuracy", "test_accuracy", "test_f1_macro"} <= set(mlflow_run.data.metrics)
    versions = client.search_model_versions(f"name='{TINY_DATASET}-mlp'")
    assert sorted(int(version.version) for version in versions) == list(range(1, EXPERIMENTS + 1))
    assert {version.run_id for version in versions} == {mlflow_run.info.run_id for mlflow_run in runs}
