"""A recorded run rebuilt and compared: its commit checked out in a temporary git worktree with its
recorded config, its data verified (and pulled from DVC when it can, pipeline.reproduce.data), `dvc repro
--force` run there into the same MLflow store, and every test metric, the weights, the data, the
environment and the stage inputs compared with the record (pipeline.reproduce.verdict judges them).

pipeline/commands/reproduce.py, `mlp reproduce RUN_ID`, says the whole procedure.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow

from pipeline import hardware, tracking
from pipeline.checksums import file_digest
from pipeline.errors import PipelineError
from pipeline.git import git, is_commit
from pipeline.lineage import ENVIRONMENT_ARTIFACT, REPRODUCES_VARIABLE
from pipeline.paths import METRICS_FILE, PARAMS_FILE, RAW_DIRECTORY
from pipeline.reproduce.data import RECOMPUTE_EVERYTHING, repro_arguments, share_remotes
from pipeline.reproduce.record import (
    WEIGHTS_TAG,
    RecordedRun,
    lock_differences,
    read_lineage,
    read_record,
    recorded_environment,
)
from pipeline.reproduce.tolerance import read_tolerances, tolerance_file
from pipeline.reproduce.verdict import Comparison, Reproduction

logger = logging.getLogger(__name__)

BIN_DIRECTORY = Path(sys.executable).parent


# What runs recorded before lineage/environment.json say about their environment.
LEGACY_ENVIRONMENT_TAGS = ("cpu.model", "cpu.count", "threads.", "python.version", "package.", "requirements_lock.")


def reproduce(run_id: str, repository: Path, tolerance: float | None = None) -> Reproduction:
    """Rebuild run `run_id` from its lineage record and compare it; raise PipelineError if it cannot be rebuilt.

    `tolerance`: of the test accuracy, instead of the measured ones in reports/tolerance/."""
    mlflow.set_tracking_uri(tracking.tracking_uri())
    recorded = read_record(run_id)
    if not is_commit(recorded.commit, cwd=repository):
        raise PipelineError(
            f"run {run_id} was made at commit {recorded.commit}, which this repository does not have: fetch it"
        )
    local_files = _verified_local_data(repository, recorded.data)
    # Known before the long part, so that the log says what a difference will be judged by.
    tolerances = {"test_accuracy": tolerance} if tolerance is not None else read_tolerances(recorded.params, repository)
    source = "given with --tolerance" if tolerance is not None else None
    if tolerances and not source:
        source = f"measured across seeds in {tolerance_file(recorded.params).as_posix()}"
    logger.info("tolerance in another environment: %s", source or "none measured (`mlp tolerance`)")
    with tempfile.TemporaryDirectory(prefix="reproduce-") as temporary:
        worktree = Path(temporary) / "worktree"
        git("worktree", "add", "--quiet", "--detach", str(worktree), recorded.commit, cwd=repository)
        try:
            metrics = _rerun(recorded, worktree, repository, local_files)
            reproduced_data = {name: file_digest(worktree / RAW_DIRECTORY / name) for name in recorded.data}
        finally:
            git("worktree", "remove", "--force", str(worktree), cwd=repository)
    return _compare(recorded, metrics["mlflow_run_id"], reproduced_data, tolerances or {}, source)


def _rerun(recorded: RecordedRun, worktree: Path, repository: Path, local_files: list[Path]) -> dict:
    """Prepare the worktree as the run had it and run `dvc repro --force` there; return its metrics.json."""
    if recorded.dirty and recorded.diff_artifact:
        patch = Path(mlflow.artifacts.download_artifacts(run_id=recorded.run_id, artifact_path=recorded.diff_artifact))
        if subprocess.run(["git", "apply", str(patch)], cwd=worktree).returncode != 0:
            raise PipelineError(
                f"the recorded diff of run {recorded.run_id} does not apply to commit {recorded.commit}"
            )
    (worktree / PARAMS_FILE).write_text(recorded.params_text, encoding="utf-8")
    share_remotes(repository, worktree, _tool("dvc"))
    # One cache for both: nothing is stored or fetched twice.
    _run([_tool("dvc"), "config", "--local", "cache.dir", str(repository / ".dvc" / "cache")], worktree)
    environment = {
        **os.environ,
        "PATH": f"{BIN_DIRECTORY}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
        REPRODUCES_VARIABLE: recorded.run_id,
    }
    for variable in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        environment.pop(variable, None)
    arguments = repro_arguments(worktree, _tool("dvc"), environment)
    if arguments == RECOMPUTE_EVERYTHING:
        (worktree / RAW_DIRECTORY).mkdir(parents=True, exist_ok=True)
        for path in local_files:
            shutil.copy2(path, worktree / RAW_DIRECTORY / path.name)
    logger.info("re-running commit %s with the recorded config in %s", recorded.commit[:12], worktree)
    result = subprocess.run([_tool("dvc"), *arguments], cwd=worktree, env=environment)
    if result.returncode != 0:
        raise PipelineError(
            f"the reproduction of run {recorded.run_id} failed: `dvc {' '.join(arguments)}` exited {result.returncode}"
        )
    return json.loads((worktree / METRICS_FILE).read_text(encoding="utf-8"))


def _compare(
    recorded: RecordedRun,
    new_run_id: str,
    reproduced_data: dict[str, str],
    tolerances: dict[str, float],
    tolerance_source: str | None,
) -> Reproduction:
    client = tracking.client()
    new_run = client.get_run(new_run_id)
    comparisons = [
        Comparison(name, value, new_run.data.metrics.get(name), tolerance=tolerances.get(name))
        for name, value in sorted(recorded.test_metrics.items())
    ]
    weights = new_run.data.tags.get(WEIGHTS_TAG)
    comparisons.append(Comparison(WEIGHTS_TAG, recorded.weights_sha256, weights, kind="weights"))
    comparisons += [
        Comparison(f"data {name}", recorded.data[name], reproduced_data[name], kind="data")
        for name in sorted(recorded.data)
    ]
    environment, compared_by = environment_differences(recorded, new_run)
    reproduction = Reproduction(new_run.info.run_id, comparisons, environment, compared_by, tolerance_source)
    if recorded.lock:
        reproduction.stage_inputs = lock_differences(recorded.lock, (read_lineage(new_run_id) or {}).get("dvc", {}))
    client.set_tag(new_run.info.run_id, "reproduction.verdict", reproduction.verdict)
    return reproduction


def environment_differences(recorded: RecordedRun, new_run: mlflow.entities.Run) -> tuple[list[str], str]:
    """How the reproduction's environment differs from the recorded one, and what was compared."""
    reproduced = recorded_environment(new_run.info.run_id)
    if recorded.environment is not None and reproduced is not None:
        return hardware.differences(recorded.environment, reproduced), ENVIRONMENT_ARTIFACT
    # A run from before the fingerprint existed (or a reproduction at its commit): the tags it has.
    before, after = _legacy_environment(recorded.tags), _legacy_environment(new_run.data.tags)
    return hardware.differences(before, after), "the tags cpu.model, cpu.count, threads.* and package.* only"


def _legacy_environment(tags: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in tags.items() if name.startswith(LEGACY_ENVIRONMENT_TAGS)}


def _verified_local_data(repository: Path, recorded: dict[str, str]) -> list[Path]:
    """Local raw files that match the record; a file that exists but differs is refused, a missing one is fetched."""
    present = []
    for name, sha256 in recorded.items():
        path = repository / RAW_DIRECTORY / name
        if not path.exists():
            logger.info("%s is not here: DVC or the download stage will bring it, verified", path)
            continue
        actual = file_digest(path)
        if actual != sha256:
            raise PipelineError(f"{path} no longer verifies: sha256 {actual}, the run recorded {sha256}")
        present.append(path)
    return present


def _tool(name: str) -> str:
    candidate = BIN_DIRECTORY / name
    return str(candidate) if candidate.exists() else name


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
