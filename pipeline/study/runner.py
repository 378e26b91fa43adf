"""DVC experiments run with `dvc exp run --temp` and read back from their commits: a study's rows, a search's
trials; and what a finished row measured. DVC and MLflow are imported where used: `mlp study --help` needs neither."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import psutil

from pipeline.errors import ConfigError, PipelineError
from pipeline.git import git, git_or_empty
from pipeline.paths import HISTORY_FILE, METRICS_FILE
from pipeline.study.schema import LATE_EPOCHS, Measured, StudyRow

logger = logging.getLogger(__name__)

# A stopped experiment's DVC and stage processes get this long to end their MLflow run before SIGKILL.
STOP_TIMEOUT_SECONDS = 60


def run_experiment(
    name: str, overrides: list[str], *stages: str, output: IO | None = None, env: dict[str, str] | None = None
) -> int:
    """Run `dvc exp run --temp --name NAME [STAGES] -S OVERRIDE...` to its end; return its exit status.

    Its processes stay in this process's group: killing the group (kill -9 of `mlp search` or `mlp study`)
    leaves no experiment running. Interrupted (KeyboardInterrupt here), it stops the experiment (stop_experiments)
    and the interruption goes on."""
    # Experiments that start together (two search workers) queue for the repository's lock instead of failing.
    command = [sys.executable, "-m", "dvc", "--wait-for-lock", "exp", "run", "--temp", "--name", name, *stages]
    command += [argument for override in overrides for argument in ("-S", override)]
    process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT if output else None)
    try:
        return process.wait()
    except KeyboardInterrupt:
        stop_experiments(signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            stop_experiments(signal.SIGKILL)
            process.wait()
        raise


def stop_experiments(signal_number: int) -> None:
    """Send `signal_number` to every process this one started, at any depth: SIGINT reaches each experiment's
    stage, which ends its MLflow run KILLED (DVC ignores SIGINT while its stage runs); SIGKILL ends them all.
    Their parents (this process's threads or main thread) wait for them: no process is reaped here."""
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal_number)


def current_commit() -> str:
    if commit := git_or_empty("rev-parse", "--verify", "--quiet", "HEAD"):
        return commit
    raise PipelineError("a study runs from a git commit: commit the project first")


def resolve_baseline(revision: str) -> str:
    if commit := git_or_empty("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"):
        return commit
    raise ConfigError(f"--baseline {revision}: not a commit of this repository")


def finished_experiments(baseline: str) -> dict[str, str]:
    """{experiment name: experiment commit} of the DVC experiments run from `baseline`."""
    # Read from git's refs, as `dvc exp list` does, but without taking DVC's
    # repository lock: a report can be written while experiments run.
    from dvc.repo.experiments.refs import ExpRefInfo

    experiments = {}
    for line in git("for-each-ref", "--format=%(refname) %(objectname)", "refs/exps/").splitlines():
        reference, sha = line.split()
        with contextlib.suppress(ValueError):  # refs/exps/ also holds DVC's stashes
            info = ExpRefInfo.from_ref(reference)
            if info.baseline_sha == baseline:
                experiments[info.name] = sha
    return experiments


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
        measured_train=accuracy[-1],
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
