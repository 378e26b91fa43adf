"""What `mlp search` does on the machine it runs on: check the search, start the workers and show
the study's progress, keep the study's MLflow run, write the report.

The budget counts completed and pruned trials over all workers, of this machine
and of any other joining the study through PostgreSQL. Interrupted (Ctrl+C,
SIGTERM), the workers stop their trials, marked FAIL, and no report is written.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config import compose, parse_params
from pipeline.errors import ConfigError, PipelineError
from pipeline.search.schema import check_values, load_search, max_epochs, search_path

# Optuna and MLflow (pipeline.search.storage, .study, .report) are imported
# in the functions that use them: `mlp search --help` and a refused search file need none of them.

logger = logging.getLogger(__name__)

POLL_SECONDS = 2


def run_search(
    name_or_path: str, *, workers: int, storage: str | None, study_name: str | None, report_only: bool, no_report: bool
) -> None:
    """Check the search, run its trials to the budget on `workers` processes, write the report."""
    path = search_path(name_or_path)
    search = load_search(path)
    if workers < 0 or (workers == 0 and not report_only):
        raise ConfigError(f"--workers {workers}: give 1 or more")
    study_name = study_name or path.stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", study_name):
        # It names a folder, DVC experiments and an experiment file.
        raise ConfigError(f"study name {study_name!r}: use letters, digits, '_' and '-' only")
    check_values(search, path)
    # Only now: a refused file or name is told in a second, without loading Optuna, MLflow and TensorFlow.
    import optuna

    from pipeline.search import storage as search_storage
    from pipeline.search.report import write_report
    from pipeline.search.study import create_study, default_storage, fail_abandoned_trials
    from pipeline.study.runner import current_commit

    base = parse_params(compose(search.base_overrides()), path)
    current_commit()  # trials are DVC experiments: they need a commit to start from
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says it all
    location = storage or os.environ.get(search_storage.STORAGE_VARIABLE) or default_storage(study_name)
    study = create_study(study_name, location, search, max_epochs=max_epochs(search, base.train.epochs))
    fail_abandoned_trials(study)
    parent = parent_run(study, base.mlflow.experiment_name)
    failure = None
    if not report_only:
        deadline = time.time() + 60 * (search.budget.timeout_minutes or 10**9)
        try:
            run_workers(path, study, location, workers=workers, deadline=deadline, total=search.budget.n_trials)
        except KeyboardInterrupt:
            # No report: it would retrain the best trial, and the user asked to stop.
            end_parent_run(study, parent, "KILLED")
            raise
        except PipelineError as error:
            failure = error  # a worker failed: the trials run so far are reported all the same
    if not no_report:
        directory = write_report(study, search, path, parent_run_id=parent)
        logger.info("report: %s", directory / "README.md")
    end_parent_run(study, parent, "FAILED" if failure else "FINISHED")
    if failure:
        raise failure


def parent_run(study, experiment_name: str) -> str:
    """The study's MLflow run, parent of every trial's: created by the first `mlp search`, reopened by the next."""
    from pipeline.search.study import PARENT_RUN_ATTRIBUTE
    from pipeline.tracking import client, experiment_id

    run_id = study.user_attrs.get(PARENT_RUN_ATTRIBUTE)
    if run_id:
        client().update_run(run_id, status="RUNNING")
        return run_id
    tags = {"search.study": study.study_name, "search.role": "study", "mlflow.runName": f"search {study.study_name}"}
    run = client().create_run(experiment_id(experiment_name), run_name=f"search {study.study_name}", tags=tags)
    study.set_user_attr(PARENT_RUN_ATTRIBUTE, run.info.run_id)
    return run.info.run_id


def end_parent_run(study, run_id: str, status: str) -> None:
    """End the study's run, unless trials still run (workers of another machine): then the last to stop ends it."""
    from optuna.trial import TrialState

    from pipeline.tracking import client

    if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        client().set_terminated(run_id, status)


def start_worker(path: Path, study_name: str, location: str, index: int, deadline: float) -> subprocess.Popen:
    from pipeline.search import storage as search_storage
    from pipeline.search.study import log_directory

    log = log_directory(study_name) / f"worker-{index}.log"
    command = [sys.executable, "-m", "pipeline.search.worker", str(path), study_name, str(deadline)]
    environment = os.environ | {search_storage.STORAGE_VARIABLE: location}
    with log.open("a", encoding="utf-8") as stream:
        # A process group of its own: Ctrl+C reaches this process only, which stops each worker once, by SIGTERM.
        return subprocess.Popen(command, env=environment, stdout=stream, stderr=subprocess.STDOUT, process_group=0)


def run_workers(path: Path, study, location: str, *, workers: int, deadline: float, total: int | None) -> None:
    """Run the workers until each has found the budget spent; show the study's progress meanwhile."""
    from tqdm import tqdm

    from pipeline.search.study import log_directory

    processes = [start_worker(path, study.study_name, location, index, deadline) for index in range(workers)]
    try:
        with tqdm(total=total, desc=study.study_name, unit="trial", dynamic_ncols=True) as bar:
            while any(process.poll() is None for process in processes):
                show_progress(bar, study)
                time.sleep(POLL_SECONDS)
            show_progress(bar, study)
    except KeyboardInterrupt:
        logger.warning("interrupted: stopping the workers and their trials")
        for process in processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait()
        raise
    failed = [index for index, process in enumerate(processes) if process.returncode != 0]
    if failed:
        logs = ", ".join(str(log_directory(study.study_name) / f"worker-{index}.log") for index in failed)
        raise PipelineError(f"{len(failed)} of {workers} workers failed: see {logs}")


def show_progress(bar, study) -> None:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(trial.state == state for trial in trials) for state in TrialState}
    bar.n = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    completed = [trial.value for trial in trials if trial.state == TrialState.COMPLETE]
    best = (max if study.direction.name == "MAXIMIZE" else min)(completed) if completed else None
    bar.set_postfix(
        done=counts[TrialState.COMPLETE],
        pruned=counts[TrialState.PRUNED],
        failed=counts[TrialState.FAIL],
        running=counts[TrialState.RUNNING],
        best="-" if best is None else f"{best:.4f}",
        refresh=False,
    )
    bar.refresh()
