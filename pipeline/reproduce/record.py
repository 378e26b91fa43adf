"""What a recorded MLflow run says produced it, read back from its lineage artifacts (pipeline.lineage).

Runs recorded before lineage/lineage.json kept the same facts as tags and config/params.yaml: they are
read into the same shape, so old runs rebuild too."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import yaml

from pipeline import tracking
from pipeline.config import Params, parse_params, read_yaml
from pipeline.errors import PipelineError
from pipeline.lineage import DIFF_ARTIFACT, ENVIRONMENT_ARTIFACT, LINEAGE_ARTIFACT

PARAMS_ARTIFACT = "config/params.yaml"
WEIGHTS_TAG = "model.weights_sha256"


@dataclass(frozen=True)
class RecordedRun:
    run_id: str
    commit: str
    diff_artifact: str | None  # the uncommitted diff to apply to the commit, if the tree was dirty
    weights_sha256: str
    test_metrics: dict[str, float]
    params_text: str
    params: Params
    data: dict[str, str]  # raw file name -> sha256
    lock: dict[str, dict[str, dict[str, str]]]  # stage -> deps|outs -> path -> md5, as dvc.lock had them
    tags: dict[str, str]
    environment: dict | None  # lineage/environment.json; None for runs recorded before it existed


def read_record(run_id: str) -> RecordedRun:
    """The run's lineage record, its weights hash and its test metrics, checked for completeness."""
    try:
        original = tracking.client().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise PipelineError(f"run {run_id} not found in the MLflow store {tracking.tracking_uri()}") from None
    tags = original.data.tags
    test_metrics = {name: value for name, value in original.data.metrics.items() if name.startswith("test_")}
    lineage = json_artifact(run_id, LINEAGE_ARTIFACT) or lineage_from_tags(run_id, tags)
    code = lineage.get("code") or {}
    scored = test_metrics or "search.trial" in tags  # a search trial never reads the test split: weights only
    if not code.get("commit") or not tags.get(WEIGHTS_TAG) or not scored:
        raise PipelineError(
            f"run {run_id} has no complete lineage record (a commit in {LINEAGE_ARTIFACT}, the tag {WEIGHTS_TAG} "
            "and test metrics are needed): it was not made by this pipeline, or its evaluate stage did not finish"
        )
    params_text = yaml.safe_dump((lineage.get("config") or {}).get("params"), sort_keys=False)
    params = parse_params(params_text, Path(f"the recorded config of run {run_id}"))
    data = {name: entry["sha256"] for name, entry in (lineage.get("data") or {}).get("files", {}).items()}
    pinned = {spec.name: spec.sha256 for spec in params.dataset.files.values() if spec.sha256}
    if any(data.get(name) != sha256 for name, sha256 in pinned.items()):
        raise PipelineError(
            f"the recorded config of run {run_id} pins other data than the run recorded: {pinned} != {data}"
        )
    return RecordedRun(
        run_id=run_id,
        commit=code["commit"],
        diff_artifact=code.get("diff"),
        weights_sha256=tags[WEIGHTS_TAG],
        test_metrics=test_metrics,
        params_text=params_text,
        params=params,
        data=data,
        lock=lineage.get("dvc") or {},
        tags=dict(tags),
        environment=json_artifact(run_id, ENVIRONMENT_ARTIFACT),
    )


def artifact_text(run_id: str, path: str) -> str | None:
    """The text of the run's artifact `path`, or None when the run has none."""
    try:
        return mlflow.artifacts.load_text(f"runs:/{run_id}/{path}")
    except (mlflow.exceptions.MlflowException, OSError):
        return None


def json_artifact(run_id: str, path: str) -> dict | None:
    """The run's JSON artifact `path` (lineage/lineage.json, lineage/environment.json), or None."""
    text = artifact_text(run_id, path)
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        raise PipelineError(f"{path} of run {run_id} is not JSON: it was damaged") from None


def lineage_from_tags(run_id: str, tags: dict[str, str]) -> dict[str, Any]:
    """A run recorded before lineage.json: git.*, data.<file>.sha256 and dvc.lock.* tags and config/params.yaml."""
    params = artifact_text(run_id, PARAMS_ARTIFACT)
    if params is None:
        return {}
    lock: dict[str, dict[str, dict[str, str]]] = {}
    for name, md5 in tags.items():
        if name.startswith("dvc.lock."):
            stage, kind, dependency = name.removeprefix("dvc.lock.").split(".", 2)
            lock.setdefault(stage, {}).setdefault(kind, {})[dependency] = md5
    files = {
        name.removeprefix("data.").removesuffix(".sha256"): {"sha256": value}
        for name, value in tags.items()
        if name.startswith("data.") and name.endswith(".sha256")
    }
    return {
        "code": {"commit": tags.get("git.commit"), "diff": DIFF_ARTIFACT if tags.get("git.dirty") == "true" else None},
        "data": {"files": files},
        "config": {"params": read_yaml(params, "the run's config/params.yaml")},
        "dvc": lock,
    }


def lock_differences(recorded: dict, reproduced: dict) -> list[str]:
    """The stage inputs whose md5 in the reproduction's dvc.lock is not the recorded one: `train.deps.<path>`."""
    return [
        f"{stage}.deps.{path}"
        for stage, entry in sorted(recorded.items())
        for path, md5 in sorted(entry.get("deps", {}).items())
        if reproduced.get(stage, {}).get("deps", {}).get(path) != md5
    ]
