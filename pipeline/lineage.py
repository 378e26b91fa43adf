"""What produced a run: code, configuration, data, software and hardware.

Collected by the train and evaluate stages into the MLflow run as tags, so
that `mlp reproduce <run id>` can rebuild the run from its record alone. The
hardware and numerics fingerprint (pipeline.hardware) and the package versions
are one JSON artifact, `lineage/environment.json`, summarized by two tags:
`environment.sha256` and `cpu.isa`.
"""

from __future__ import annotations

import contextlib
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import tensorflow as tf
import yaml

from pipeline import hardware
from pipeline.checksums import file_digest
from pipeline.config import compose, flatten
from pipeline.dataset_config import FileSpec
from pipeline.files import read_json_object
from pipeline.git import git_or_empty
from pipeline.paths import CONFIG_DIRECTORY, DATA_SOURCES_FILE, LOCK_FILE, PARAMS_FILE, RAW_DIRECTORY, REQUIREMENTS_LOCK

PACKAGES = ("tensorflow-cpu", "keras", "dvc", "hydra-core", "mlflow", "numpy")
# Where a run keeps environment_record(): `mlp reproduce` reads it back.
ENVIRONMENT_ARTIFACT = "lineage/environment.json"
# Set by `mlp reproduce` for the runs it starts.
REPRODUCES_VARIABLE = "MLP_REPRODUCES_RUN"


def run_tags(raw_files: dict[str, FileSpec]) -> tuple[dict[str, str], str]:
    """A new run's lineage tags, the dataset's `raw_files` hashed, and the uncommitted diff ("" when clean)."""
    code, diff = code_tags()
    # Computed, not copied from the pins: a dataset may pin only an md5.
    data = data_tags([RAW_DIRECTORY / spec.name for spec in raw_files.values()])
    overrides = " ".join(config_overrides()) or "(none)"
    return {**code, **environment_tags(), **data, "config.overrides": overrides}, diff


def code_tags() -> tuple[dict[str, str], str]:
    """Git commit and dirtiness as tags, and the uncommitted diff ("" when clean)."""
    commit = git_or_empty("rev-parse", "HEAD")
    if not commit:
        return {}, ""
    # Tracked files only: untracked outputs (data, reports) are not code.
    diff = git_or_empty("diff", "HEAD", "--", ".", ":(exclude)params.yaml", ":(exclude)dvc.lock", ":(exclude)reports")
    # Configuration is code too: a new conf/ file that is not committed makes the
    # run impossible to re-run from its commit (train warns and stores the file).
    dirty = bool(diff) or bool(untracked_config_files())
    tags = {"git.commit": commit, "git.dirty": str(dirty).lower()}
    for variable, tag in (("DVC_EXP_NAME", "dvc.experiment_name"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev")):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    if os.environ.get(REPRODUCES_VARIABLE):
        tags["reproduces"] = os.environ[REPRODUCES_VARIABLE]
    return tags, diff


def untracked_config_files() -> list[Path]:
    """The files under conf/ that git does not track (and does not ignore)."""
    listed = git_or_empty("ls-files", "--others", "--exclude-standard", "--", str(CONFIG_DIRECTORY))
    return [Path(line) for line in listed.splitlines() if line]


def environment_record() -> dict[str, Any]:
    """The hardware and numerics fingerprint and the software versions, as lineage/environment.json holds them."""
    return {**hardware.fingerprint(), "packages": package_versions()}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    if REQUIREMENTS_LOCK.exists():
        versions["requirements_lock.sha256"] = file_digest(REQUIREMENTS_LOCK)
    return versions


def environment_tags(record: dict[str, Any] | None = None) -> dict[str, str]:
    """Software versions, the lock file's hash, the CPU and the thread settings, and the record's summary."""
    record = record or environment_record()
    tags = {"python.version": platform.python_version()}
    tags.update({f"package.{name}": version for name, version in record["packages"].items() if name in PACKAGES})
    if "requirements_lock.sha256" in record["packages"]:
        tags["requirements_lock.sha256"] = record["packages"]["requirements_lock.sha256"]
    tags["cpu.model"] = cpu_model()
    tags["cpu.count"] = str(os.cpu_count())
    # 0 means "TensorFlow picks"; the record has the numbers in force.
    tags["threads.intra_op"] = str(tf.config.threading.get_intra_op_parallelism_threads())
    tags["threads.inter_op"] = str(tf.config.threading.get_inter_op_parallelism_threads())
    tags["platform"] = f"{platform.system()} {platform.machine()}"
    tags["environment.sha256"] = hardware.digest(record)
    tags["cpu.isa"] = hardware.isa_summary(record)
    return tags


def data_tags(raw_files: list[Path]) -> dict[str, str]:
    return {f"data.{path.name}.sha256": file_digest(path) for path in raw_files}


def config_overrides(params_file: Path = PARAMS_FILE) -> list[str]:
    """The `key=value` changes that turn conf/'s default composition into params_file."""
    current = flatten(yaml.safe_load(params_file.read_text(encoding="utf-8")))
    default = flatten(yaml.safe_load(compose()))
    changed = [f"{key}={_yaml_value(value)}" for key, value in current.items() if default.get(key, object()) != value]
    removed = [f"~{key}" for key in default if key not in current]
    return sorted(changed + removed)


def lock_tags(stages: tuple[str, ...]) -> dict[str, str]:
    """The md5 that dvc.lock records for each dependency and output of `stages`."""
    if not LOCK_FILE.exists():
        return {}
    lock = yaml.safe_load(LOCK_FILE.read_text(encoding="utf-8")) or {}
    tags = {}
    for stage in stages:
        entry = lock.get("stages", {}).get(stage, {})
        for kind in ("deps", "outs"):
            for item in entry.get(kind, []):
                tags[f"dvc.lock.{stage}.{kind}.{item['path']}"] = item.get("md5", "")
    return tags


def data_sources(raw_files: dict[str, FileSpec]) -> dict[str, str]:
    """Where each raw file came from, as the download stage recorded it: a mirror or a public URL."""
    served = read_json_object(DATA_SOURCES_FILE)
    return {spec.name: str(served.get(spec.name, "unknown")) for spec in raw_files.values()}


def dataset_source(raw_files: dict[str, FileSpec], urls: list[str]) -> str:
    """The source to show for the dataset in MLflow: the folder the first file came from, else the first URL."""
    first = data_sources(raw_files).get(next(iter(raw_files.values())).name, "unknown")
    return first.rsplit("/", 1)[0] + "/" if "/" in first else urls[0]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
