"""A recorded run rebuilt in a temporary git worktree and compared (`mlp reproduce RUN_ID`), step by step as
docs/reproducibility.md ("Reproducing a run") describes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath

import mlflow

from pipeline import hardware, tracking
from pipeline.download import MIRROR_ENVIRONMENT_VARIABLE
from pipeline.errors import PipelineError
from pipeline.files import file_digest
from pipeline.git import git, is_commit
from pipeline.lineage import ENVIRONMENT_ARTIFACT, LINEAGE_ARTIFACT, REPRODUCES_VARIABLE, lock_md5s
from pipeline.paths import LOCK_FILE, METRICS_FILE, PARAMS_FILE, PROCESSED_ROOT, RAW_ROOT, raw_directory
from pipeline.reproduce.record import WEIGHTS_TAG, RecordedRun, json_artifact, lock_differences, read_record
from pipeline.reproduce.verdict import Comparison, Reproduction, read_tolerances, tolerance_file

logger = logging.getLogger(__name__)

# This interpreter's DVC, as the worktree's stages run with it.
DVC = shutil.which("dvc", path=Path(sys.executable).parent) or "dvc"
# Set when this runs inside a DVC stage or experiment; the worktree's `dvc repro` is a run of its own.
DVC_VARIABLES = ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV")
DATA_STAGES = ("download", "preprocess")
# What a fresh worktree lacks and a pull brings back, the data stages' outputs under these folders
# (data/raw/<dataset>, or data/raw itself at commits from before each dataset had a folder of its
# own); any other change means the data would differ.
DATA_ROOTS = (RAW_ROOT.as_posix(), PROCESSED_ROOT.as_posix())
MISSING_STATES = {"deleted", "not in cache"}
# --force: the stages run rather than being restored from DVC's run cache.
RECOMPUTE_EVERYTHING = ("repro", "--force")
RECOMPUTE_FROM_TRAIN = ("repro", "--force", "--downstream", "train")
# What runs recorded before lineage/environment.json say about their environment.
LEGACY_ENVIRONMENT_TAGS = ("cpu.model", "cpu.count", "threads.", "python.version", "package.", "requirements_lock.")


def reproduce(run_id: str, repository: Path, tolerance: float | None = None) -> Reproduction:
    """Rebuild run `run_id` from its lineage record and compare it; raise PipelineError if it cannot be rebuilt.

    `tolerance`: of the test accuracy, instead of the measured ones in reports/tolerance/."""
    recorded = read_record(run_id)  # through tracking.client(), which points MLflow at the store
    if not is_commit(recorded.commit, cwd=repository):
        raise PipelineError(
            f"run {run_id} was made at commit {recorded.commit}, which this repository does not have: fetch it"
        )
    local_files = verified_local_data(repository / raw_directory(recorded.params.dataset.name), recorded.data)
    # Known before the long part, so that the log says what a difference will be judged by.
    if tolerance is not None:
        tolerances, source = {"test_accuracy": tolerance}, "given with --tolerance"
    else:
        tolerances = read_tolerances(recorded.params, repository) or {}
        source = f"measured across seeds in {tolerance_file(recorded.params).as_posix()}" if tolerances else None
    logger.info("tolerance in another environment: %s", source or "none measured (`mlp tolerance`)")
    with tempfile.TemporaryDirectory(prefix="reproduce-") as temporary:
        worktree = Path(temporary) / "worktree"
        git("worktree", "add", "--quiet", "--detach", str(worktree), recorded.commit, cwd=repository)
        try:
            metrics = rerun(recorded, worktree, repository, local_files)
            folder = raw_folder(worktree, recorded.params.dataset.name)
            reproduced_data = {name: file_digest(folder / name) for name in recorded.data}
        finally:
            git("worktree", "remove", "--force", str(worktree), cwd=repository)
    return compare(recorded, metrics["mlflow_run_id"], reproduced_data, tolerances, source)


def rerun(recorded: RecordedRun, worktree: Path, repository: Path, local_files: list[Path]) -> dict:
    """Prepare the worktree as the run had it and run `dvc repro --force` there; return its metrics.json."""
    if recorded.diff_artifact:
        patch = mlflow.artifacts.download_artifacts(run_id=recorded.run_id, artifact_path=recorded.diff_artifact)
        if subprocess.run(["git", "apply", patch], cwd=worktree).returncode != 0:
            raise PipelineError(
                f"the recorded diff of run {recorded.run_id} does not apply to commit {recorded.commit}"
            )
    (worktree / PARAMS_FILE).write_text(recorded.params_text, encoding="utf-8")
    share_remotes(repository, worktree)
    # One cache for both: nothing is stored or fetched twice.
    configured = dvc("config", "--local", "cache.dir", str(repository / ".dvc" / "cache"), cwd=worktree)
    if configured.returncode != 0:
        raise PipelineError(f"`dvc config --local cache.dir` failed: {configured.stderr.strip()}")
    environment = {
        **{name: value for name, value in os.environ.items() if name not in DVC_VARIABLES},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
        REPRODUCES_VARIABLE: recorded.run_id,
    }
    arguments = repro_arguments(worktree, environment)
    if arguments == RECOMPUTE_EVERYTHING and len(local_files) == len(recorded.data):
        # Served to the download stage as a mirror (<mirror>/<dataset>/<file>): `dvc repro --force` empties
        # the stage's output folder before it runs, and the files need no network.
        dataset_name = recorded.params.dataset.name
        mirror = worktree.with_name("mirror")
        (mirror / dataset_name).mkdir(parents=True)
        for path in local_files:
            shutil.copy2(path, mirror / dataset_name / path.name)
        environment[MIRROR_ENVIRONMENT_VARIABLE] = str(mirror)
    logger.info("re-running commit %s with the recorded config in %s", recorded.commit[:12], worktree)
    result = subprocess.run([DVC, *arguments], cwd=worktree, env=environment)
    if result.returncode != 0:
        raise PipelineError(
            f"the reproduction of run {recorded.run_id} failed: `dvc {' '.join(arguments)}` exited {result.returncode}"
        )
    return json.loads((worktree / METRICS_FILE).read_text(encoding="utf-8"))


def compare(
    recorded: RecordedRun, new_run_id: str, reproduced_data: dict[str, str], tolerances: dict, source: str | None
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
    reproduction = Reproduction(new_run_id, comparisons, *environment_differences(recorded, new_run), source)
    if recorded.lock:
        reproduced_lock = (json_artifact(new_run_id, LINEAGE_ARTIFACT) or {}).get("dvc", {})
        reproduction.stage_inputs = lock_differences(recorded.lock, reproduced_lock)
    client.set_tag(new_run_id, "reproduction.verdict", reproduction.judge()[0])
    return reproduction


def environment_differences(recorded: RecordedRun, new_run: mlflow.entities.Run) -> tuple[list[str], str]:
    """How the reproduction's environment differs from the recorded one, and what was compared."""
    reproduced = json_artifact(new_run.info.run_id, ENVIRONMENT_ARTIFACT)
    if recorded.environment is not None and reproduced is not None:
        return hardware.differences(recorded.environment, reproduced), ENVIRONMENT_ARTIFACT
    # A run from before the fingerprint existed (or a reproduction at its commit): the tags it has.
    before, after = (
        {k: v for k, v in tags.items() if k.startswith(LEGACY_ENVIRONMENT_TAGS)}
        for tags in (recorded.tags, new_run.data.tags)
    )
    return hardware.differences(before, after), "the tags cpu.model, cpu.count, threads.* and package.* only"


def raw_folder(worktree: Path, dataset_name: str) -> Path:
    """Where the worktree's commit keeps the dataset's raw files: data/raw/<dataset>/, or data/raw/ itself at
    commits whose dvc.yaml predates each dataset's folder of its own."""
    own_folders = "${dataset.name}" in (worktree / "dvc.yaml").read_text(encoding="utf-8")
    return worktree / (raw_directory(dataset_name) if own_folders else RAW_ROOT)


def is_data_output(path: str) -> bool:
    return any(PurePosixPath(path).is_relative_to(root) for root in DATA_ROOTS)


def verified_local_data(folder: Path, recorded: dict[str, str]) -> list[Path]:
    """Local raw files in `folder` that match the record; a file that exists but differs is refused, a missing
    one is fetched."""
    present = []
    for name, sha256 in recorded.items():
        path = folder / name
        if not path.exists():
            logger.info("%s is not here: DVC or the download stage will bring it, verified", path)
            continue
        if (actual := file_digest(path)) != sha256:
            raise PipelineError(f"{path} no longer verifies: sha256 {actual}, the run recorded {sha256}")
        present.append(path)
    return present


def dvc(*arguments: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([DVC, *arguments], cwd=cwd, env=env, capture_output=True, text=True)


def share_remotes(repository: Path, worktree: Path) -> None:
    """Give the worktree the repository's DVC remotes: its .dvc/config.local (credentials, a remote of
    one's own) and each local folder's path resolved from the repository, which a relative one is
    relative to."""
    local_config = repository / ".dvc" / "config.local"
    if local_config.exists():
        shutil.copy2(local_config, worktree / ".dvc" / "config.local")
    for line in dvc("remote", "list", cwd=repository).stdout.splitlines():
        name, _, url = line.partition(" ")
        url = url.strip().removesuffix("(default)").strip()
        if url and "://" not in url:
            # Should this fail, the pull does too, and the data stages run instead.
            dvc("remote", "modify", "--local", name, "url", url, cwd=worktree)


def repro_arguments(worktree: Path, environment: dict[str, str]) -> tuple[str, ...]:
    """Pull the data stages' outputs into `worktree` if DVC has them; the `dvc repro` arguments that follow."""
    reason = why_the_lock_does_not_apply(worktree, environment)
    if reason is None:
        pulled = dvc("pull", *DATA_STAGES, cwd=worktree, env=environment)
        if pulled.returncode == 0:
            summary = "; ".join(line.strip() for line in pulled.stdout.splitlines() if " files " in line)
            locked = lock_md5s(DATA_STAGES, worktree / LOCK_FILE).values()
            outputs = [
                f"{path} md5 {md5}" for stage in locked for path, md5 in stage["outs"].items() if is_data_output(path)
            ]
            logger.info(
                "pulled from DVC (%s) %s: download and preprocess are not run again",
                summary or "everything in the cache",
                ", ".join(outputs),
            )
            return RECOMPUTE_FROM_TRAIN
        for root in DATA_ROOTS:  # what a failed pull left: the data stages start from nothing
            shutil.rmtree(worktree / root, ignore_errors=True)
        errors = [line for line in pulled.stderr.splitlines() if line.startswith("ERROR")] or ["`dvc pull` failed"]
        reason = f"neither the DVC cache nor the remote has them ({errors[-1].removeprefix('ERROR: ')})"
    logger.info("recomputing %s: %s", " and ".join(DATA_ROOTS), reason)
    return RECOMPUTE_EVERYTHING


def why_the_lock_does_not_apply(worktree: Path, environment: dict[str, str]) -> str | None:
    """None when the commit's dvc.lock describes the data stages as they stand in `worktree`, else why not."""
    if not (worktree / LOCK_FILE).exists():
        return f"the commit has no {LOCK_FILE}"
    status = dvc("status", "--json", *DATA_STAGES, cwd=worktree, env=environment)
    if status.returncode != 0:
        return f"`dvc status` failed: {status.stderr.strip().splitlines()[-1:]}"
    changes = blocking_changes(json.loads(status.stdout or "{}"))
    if not changes:
        return None
    more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
    return f"the recorded config or code differs from the commit's {LOCK_FILE} ({'; '.join(changes[:3])}{more})"


def blocking_changes(status: dict) -> list[str]:
    """The changes in `dvc status --json` output other than the data outputs being absent."""
    changes = []
    for stage, entries in status.items():
        for entry in entries:
            for kind, paths in entry.items() if isinstance(entry, dict) else [(entry, None)]:
                if not isinstance(paths, dict):
                    changes.append(f"{stage}: {kind}")
                    continue
                for path, state in paths.items():
                    if is_data_output(path) and state in MISSING_STATES:
                        continue
                    described = state if isinstance(state, str) else ", ".join(f"{k} {v}" for k, v in state.items())
                    changes.append(f"{stage}: {kind.removeprefix('changed ')} {path} {described}")
    return changes
