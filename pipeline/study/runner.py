"""A study's rows as DVC experiments: queued, run one at a time, read back. A finished row is an experiment
whose baseline is the study's commit; its figures come from its commit's reports and its MLflow run."""

# DVC and MLflow (with TensorFlow) are imported where used: `mlp study --help` and the report need neither.

from __future__ import annotations

import contextlib
import csv
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from pipeline.errors import ConfigError, PipelineError
from pipeline.git import git, git_or_empty, is_commit
from pipeline.paths import HISTORY_FILE, METRICS_FILE
from pipeline.study.schema import LATE_EPOCHS, Measured, Study, StudyRow, experiment_name

logger = logging.getLogger(__name__)

# How long a killed queue task may take to be marked failed, so that it can be removed.
KILL_TIMEOUT_SECONDS = 60


def run_dvc(*arguments: str) -> subprocess.CompletedProcess:
    """Run a DVC command with this interpreter's DVC, output streamed to ours."""
    return subprocess.run([sys.executable, "-m", "dvc", *arguments], check=False)


def current_commit() -> str:
    commit = git_or_empty("rev-parse", "--verify", "--quiet", "HEAD")
    if not commit:
        raise PipelineError("a study runs from a git commit: commit the project first")
    return commit


def resolve_baseline(revision: str) -> str:
    """The commit `revision` names (--baseline)."""
    if not is_commit(revision):
        raise ConfigError(f"--baseline {revision}: not a commit of this repository")
    return git("rev-parse", "--verify", f"{revision}^{{commit}}")


def finished_experiments(baseline: str) -> dict[str, str]:
    """{experiment name: experiment commit} of the DVC experiments run from `baseline`."""
    # Read from git's refs, as `dvc exp list` does, but without taking DVC's
    # repository lock: a report can be written while a queue runs.
    from dvc.repo.experiments.refs import ExpRefInfo

    experiments = {}
    for line in git("for-each-ref", "--format=%(refname) %(objectname)", "refs/exps/").splitlines():
        reference, sha = line.split()
        with contextlib.suppress(ValueError):  # refs/exps/ also holds DVC's stashes
            info = ExpRefInfo.from_ref(reference)
            if info.baseline_sha == baseline:
                experiments[info.name] = sha
    return experiments


def queue_entries(names: set[str]) -> dict[str, str]:
    """{name: state} of these experiments' entries in DVC's queue: queued, running or failed."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        queue = repo.experiments.celery_queue
        states = {entry.name: "queued" for entry in queue.iter_queued()}
        states.update({entry.name: "running" for entry in queue.iter_active()})
        states.update({result.entry.name: "failed" for result in queue.iter_failed()})
    return {name: state for name, state in states.items() if name in names}


def clear_queue(names: set[str]) -> None:
    """Stop and remove these experiments' queue entries (an earlier, interrupted attempt)."""
    entries = queue_entries(names)
    if not entries:
        return
    if running := sorted(name for name, state in entries.items() if state == "running"):
        # SIGINT, not SIGKILL: the stage ends its MLflow run as KILLED instead of leaving it RUNNING.
        run_dvc("queue", "kill", *running)
    # A killed task becomes failed a moment later; wait so it can be removed too.
    deadline = time.monotonic() + KILL_TIMEOUT_SECONDS
    while "running" in queue_entries(names).values() and time.monotonic() < deadline:
        time.sleep(1)
    if leftover := sorted(queue_entries(names)):
        run_dvc("queue", "remove", *leftover)


def run_rows(pending: list[StudyRow], *, study: Study, study_name: str) -> None:
    """Queue the pending rows as DVC experiments and run the queue, one row at a time."""
    names = [experiment_name(study_name, row) for row in pending]
    clear_queue(set(names))
    for row, name in zip(pending, names, strict=True):
        settings = [argument for override in study.overrides + row.overrides() for argument in ("-S", override)]
        if run_dvc("exp", "run", "--queue", "--name", name, *settings).returncode != 0:
            raise PipelineError(f"could not queue row {row.row} ({name})")
    try:
        # One job: rows share the CPU otherwise, and their wall times would not compare.
        result = run_dvc("exp", "run", "--run-all", "--jobs", "1")
    except KeyboardInterrupt:
        logger.warning("interrupted: stopping the study's queued and running rows")
        clear_queue(set(names))
        raise
    if result.returncode != 0:
        logger.warning("some rows failed; the report lists them as missing")


def committed_file(commit: str, path: Path) -> str:
    return git("show", f"{commit}:{path.as_posix()}")


def measure(row: StudyRow, commit: str | None) -> Measured | None:
    """Measured figures of a row from its experiment commit's metrics and its MLflow run; None if not run."""
    if commit is None:
        return None
    from pipeline.lineage import ENVIRONMENT_ARTIFACT
    from pipeline.reproduce.record import json_artifact
    from pipeline.tracking import client

    metrics = json.loads(committed_file(commit, METRICS_FILE))
    history = csv.DictReader(committed_file(commit, HISTORY_FILE).splitlines())
    accuracy = [100 * float(epoch["accuracy"]) for epoch in history]
    run = client().get_run(metrics["mlflow_run_id"])
    # lineage/environment.json; runs recorded before it kept the same facts as tags.
    environment = json_artifact(metrics["mlflow_run_id"], ENVIRONMENT_ARTIFACT) or {}
    tags, cpu = run.data.tags, environment.get("cpu", {})
    packages = environment.get("packages") or {
        name.removeprefix("package."): value for name, value in tags.items() if name.startswith("package.")
    }
    return Measured(
        measured_train=100 * metrics["final_epoch"]["accuracy"],
        late_gain=accuracy[-1] - accuracy[-1 - LATE_EPOCHS] if len(accuracy) > LATE_EPOCHS else None,
        reached_at=next((epoch for epoch, value in enumerate(accuracy, start=1) if value >= row.published_train), None),
        measured_test=100 * metrics["test"]["accuracy"],
        seconds=(run.info.end_time - run.info.start_time) / 1000,
        start=run.info.start_time / 1000,
        end=run.info.end_time / 1000,
        mlflow_run_id=metrics["mlflow_run_id"],
        weights_sha256=metrics["weights_sha256"],
        machine=f"{cpu.get('model_name', tags.get('cpu.model', 'unknown CPU'))}, "
        f"{cpu.get('logical_cores', tags.get('cpu.count', '?'))} cores",
        versions=", ".join(f"{name} {packages[name]}" for name in ("tensorflow-cpu", "keras") if name in packages),
    )
