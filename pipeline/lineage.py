"""What produced a run (code, configuration, data, software, hardware), as `mlp reproduce <run id>` rebuilds it.

The train stage logs lineage/lineage.json and the fingerprint lineage/environment.json (pipeline.hardware) when
it creates the run; the evaluate stage adds dvc.lock's md5s. The fields people filter runs by are tags too.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import yaml

from pipeline import hardware
from pipeline.config import FileSpec, read_text, read_yaml
from pipeline.files import file_digest, read_json_object
from pipeline.git import git_or_empty
from pipeline.overrides import hydra_overrides
from pipeline.paths import CONFIG_DIRECTORY, LOCK_FILE, PARAMS_FILE, REQUIREMENTS_LOCK, data_sources_file, raw_directory

logger = logging.getLogger(__name__)

PACKAGES = ("tensorflow-cpu", "keras", "dvc", "hydra-core", "mlflow", "numpy")
LINEAGE_ARTIFACT = "lineage/lineage.json"
ENVIRONMENT_ARTIFACT = "lineage/environment.json"
DIFF_ARTIFACT = "lineage/git_diff.patch"
UNTRACKED_ARTIFACTS = "lineage/untracked"
# The stages whose dvc.lock entries describe how the model was made.
LOCKED_STAGES = ("download", "preprocess", "train")
# MLflow refuses tag values over 8,000 characters; far fewer are readable.
MAX_OVERRIDES_TAG = 1000
OVERRIDES_CUT = f" ... (all of them in {LINEAGE_ARTIFACT})"
# Set by `mlp reproduce` for the runs it starts.
REPRODUCES_VARIABLE = "MLP_REPRODUCES_RUN"


def log_new_run_lineage(dataset_name: str, raw_files: dict[str, FileSpec]) -> dict[str, Any]:
    """Log the lineage of the active run, about to train on the dataset's `raw_files` with params.yaml (record,
    environment, uncommitted diff and conf/ files, and run_tags); return the record."""
    code, diff = code_record()
    environment = {**hardware.fingerprint(), "packages": package_versions()}
    params = read_yaml(read_text(PARAMS_FILE), PARAMS_FILE)
    record = {
        "code": code,
        # Computed, not copied from the pins: a dataset may pin only an md5.
        "data": {"dataset": dataset_name, **data_record(dataset_name, raw_files)},
        "config": {"overrides": hydra_overrides(params), "params": params, "artifact": "config/params.yaml"},
        "software": environment["packages"],
        "environment": {
            "artifact": ENVIRONMENT_ARTIFACT,
            "sha256": hardware.digest(environment),
            "cpu_isa": hardware.isa_summary(environment),
        },
    }
    if os.environ.get(REPRODUCES_VARIABLE):
        record["reproduces"] = os.environ[REPRODUCES_VARIABLE]
    mlflow.log_dict(environment, ENVIRONMENT_ARTIFACT)
    if diff:
        mlflow.log_text(diff, DIFF_ARTIFACT)
    for path, artifact in code.get("untracked_config_files", {}).items():
        logger.warning("%s is not committed: the run is marked dirty and keeps a copy; `git add %s`", path, path)
        mlflow.log_artifact(path, artifact_path=artifact.rsplit("/", 1)[0])
    mlflow.log_dict(record, LINEAGE_ARTIFACT)
    mlflow.set_tags(run_tags(record))
    return record


def run_tags(record: dict[str, Any]) -> dict[str, str]:
    """The fields of a lineage record people filter runs by, as one-line tags."""
    code = record["code"]
    overrides = " ".join(record["config"]["overrides"]) or "(none)"
    if len(overrides) > MAX_OVERRIDES_TAG:  # a tag is for reading and filtering; the record keeps the list
        overrides = overrides[: MAX_OVERRIDES_TAG - len(OVERRIDES_CUT)] + OVERRIDES_CUT
    tags = {
        "git.commit": code["commit"],
        "git.dirty": str(code["dirty"]).lower() if code["commit"] else None,
        "dvc.experiment_name": code.get("dvc_experiment", {}).get("name"),
        "dataset": record["data"]["dataset"],
        "data.sha256": record["data"]["sha256"],
        "config.overrides": overrides,
        "environment.sha256": record["environment"]["sha256"],
        "cpu.isa": record["environment"]["cpu_isa"],
        "reproduces": record.get("reproduces"),
    }
    return {name: value for name, value in tags.items() if value}


def code_record() -> tuple[dict[str, Any], str]:
    """Git commit, dirtiness, the conf/ files git does not track and the DVC experiment; and the diff."""
    commit = git_or_empty("rev-parse", "HEAD")
    if not commit:
        return {"commit": None, "dirty": None}, ""
    # Tracked files only: untracked outputs (data, reports) are not code.
    diff = git_or_empty("diff", "HEAD", "--", ".", ":(exclude)params.yaml", ":(exclude)dvc.lock", ":(exclude)reports")
    # Configuration is code too: an uncommitted conf/ file (not ignored) makes the run impossible to
    # re-run from its commit (train warns and stores the file).
    untracked = git_or_empty("ls-files", "--others", "--exclude-standard", "--", str(CONFIG_DIRECTORY)).splitlines()
    code: dict[str, Any] = {"commit": commit, "dirty": bool(diff or untracked), "diff": DIFF_ARTIFACT if diff else None}
    code["untracked_config_files"] = {path: f"{UNTRACKED_ARTIFACTS}/{path}" for path in untracked}
    experiment = {"name": os.environ.get("DVC_EXP_NAME"), "baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV")}
    if any(experiment.values()):
        code["dvc_experiment"] = experiment
    return code, diff


def data_record(dataset_name: str, raw_files: dict[str, FileSpec]) -> dict[str, Any]:
    """Each raw file's sha256 and source, and one digest over them all: `sha256sum <files> | sha256sum`."""
    sources = data_sources(dataset_name, raw_files)
    folder = raw_directory(dataset_name)
    files = {name: {"sha256": file_digest(folder / name), "source": sources[name]} for name in sorted(sources)}
    listing = "".join(f"{entry['sha256']}  {name}\n" for name, entry in files.items())
    return {"sha256": hashlib.sha256(listing.encode("utf-8")).hexdigest(), "files": files}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    if REQUIREMENTS_LOCK.exists():
        versions["requirements_lock.sha256"] = file_digest(REQUIREMENTS_LOCK)
    return versions


def lock_md5s(stages: tuple[str, ...] = LOCKED_STAGES, lock_file: Path = LOCK_FILE) -> dict[str, dict]:
    """{stage: {"deps"|"outs": {path: md5}}} as `lock_file` records them."""
    if not lock_file.exists():
        return {}
    locked = (yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}).get("stages", {})
    return {
        stage: {
            kind: {item["path"]: item.get("md5", "") for item in locked.get(stage, {}).get(kind, [])}
            for kind in ("deps", "outs")
        }
        for stage in stages
    }


def add_lock_md5s(run_id: str) -> None:
    """Add dvc.lock's md5s for the stages that made the model to the run's lineage record."""
    try:
        record = mlflow.artifacts.load_dict(f"runs:/{run_id}/{LINEAGE_ARTIFACT}")
    except (mlflow.exceptions.MlflowException, OSError, ValueError):
        record = {}  # a run its train stage made before the record existed: it gets this part alone
    mlflow.log_dict({**record, "dvc": lock_md5s()}, LINEAGE_ARTIFACT)


def data_sources(dataset_name: str, raw_files: dict[str, FileSpec]) -> dict[str, str]:
    """Where each raw file came from, as the download stage recorded it: a mirror or one of the URLs."""
    served = read_json_object(data_sources_file(raw_directory(dataset_name)))
    return {spec.name: str(served.get(spec.name, "unknown")) for spec in raw_files.values()}


def dataset_source(dataset_name: str, raw_files: dict[str, FileSpec], urls: list[str]) -> str:
    """The source to show for the dataset in MLflow: the folder the first file came from, else the first URL."""
    first = next(iter(data_sources(dataset_name, raw_files).values()))
    return first.rsplit("/", 1)[0] + "/" if "/" in first else urls[0]
