"""`mlp reproduce` reads a run's lineage record; a run recorded before lineage/lineage.json existed
(its lineage in tags and config/params.yaml) is read into the same record, in a real MLflow store."""

from __future__ import annotations

import yaml
from conftest import REPOSITORY
from mlflow.tracking import MlflowClient

from pipeline.reproduce.record import read_record


def test_a_run_recorded_with_tags_only_is_read_into_the_same_record(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("legacy", artifact_location=(tmp_path / "artifacts").as_uri())
    params = yaml.safe_load((REPOSITORY / "params.yaml").read_text())
    files = {spec["name"]: spec["sha256"] for spec in params["dataset"]["files"].values()}
    tags = {
        "git.commit": "a" * 40,
        "git.dirty": "true",
        "model.weights_sha256": "b" * 64,
        "dvc.lock.train.deps.pipeline/train.py": "c" * 32,
        **{f"data.{name}.sha256": sha256 for name, sha256 in files.items()},
    }
    run_id = client.create_run(experiment, tags=tags).info.run_id
    client.log_metric(run_id, "test_accuracy", 0.5)
    client.log_text(run_id, (REPOSITORY / "params.yaml").read_text(), "config/params.yaml")
    recorded = read_record(run_id)
    assert (recorded.commit, recorded.diff_artifact) == ("a" * 40, "lineage/git_diff.patch")  # git.dirty: its diff
    assert recorded.data == files
    assert recorded.lock == {"train": {"deps": {"pipeline/train.py": "c" * 32}}}
    assert yaml.safe_load(recorded.params_text) == params
    assert recorded.test_metrics == {"test_accuracy": 0.5} and recorded.environment is None
