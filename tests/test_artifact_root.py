"""A run's artifacts never land in a folder DVC deletes: `dvc exp run --temp` and queued experiments
run in a copy under .dvc/tmp/exps/, which DVC removes when the experiment ends."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.errors import ConfigError


@pytest.fixture
def temporary_copy(tmp_path, monkeypatch):
    """The working directory and DVC_ROOT of a stage that DVC runs in a temporary copy of `repository`."""
    repository = tmp_path / "repository"
    copy = repository / ".dvc" / "tmp" / "exps" / "run" / "tmpabc123"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(repository))
    yield repository
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_a_new_experiment_in_another_database_keeps_its_artifacts_outside_dvcs_temporary_copy(
    temporary_copy, tmp_path, monkeypatch
):
    other_store = f"sqlite:///{tmp_path / 'elsewhere' / 'other.db'}"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other_store)
    with tracking.pipeline_run(experiment_name="other") as run:
        pass
    artifact_uri = MlflowClient(other_store).get_run(run.info.run_id).info.artifact_uri
    assert "/.dvc/tmp/" not in artifact_uri
    assert artifact_uri.startswith((temporary_copy / "mlartifacts").as_uri())


def test_an_experiment_whose_artifacts_sit_in_dvcs_temporary_folder_is_refused_before_any_run(
    temporary_copy, tmp_path, monkeypatch
):
    other_store = f"sqlite:///{tmp_path / 'other.db'}"
    doomed = (temporary_copy / ".dvc" / "tmp" / "exps" / "run" / "tmpold" / "mlruns").as_uri()
    MlflowClient(other_store).create_experiment("doomed", artifact_location=doomed)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other_store)
    refused = pytest.raises(ConfigError, match=r"doomed.*inside DVC's temporary folder")
    with refused, tracking.pipeline_run(experiment_name="doomed"):
        pass
    assert (
        MlflowClient(other_store).search_runs(
            [MlflowClient(other_store).get_experiment_by_name("doomed").experiment_id]
        )
        == []
    )
