"""What `mlp search` does on its machine once the search is checked: start the workers and show the
study's progress, keep the study's MLflow run, write the report."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path
from subprocess import STDOUT, Popen

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from pipeline.config import compose, parse_params
from pipeline.errors import PipelineError
from pipeline.search.report import write_report
from pipeline.search.schema import Search, max_epochs
from pipeline.search.storage import STORAGE_VARIABLE
from pipeline.search.study import PARENT_RUN_ATTRIBUTE, create_study, fail_abandoned_trials, log_directory
from pipeline.study.runner import current_commit
from pipeline.tracking import client, experiment_id

logger = logging.getLogger(__name__)

POLL_SECONDS = 2


def run_search(arguments: argparse.Namespace, path: Path, search: Search, study_name: str) -> None:
    """Run the trials to the budget on `arguments.workers` processes, write the report (pipeline.commands.search)."""
    base = parse_params(compose(search.base_overrides()), path)
    current_commit()  # trials are DVC experiments: they need a commit to start from
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says it all
    location = arguments.storage or os.environ.get(STORAGE_VARIABLE) or str(log_directory(study_name) / "study.journal")
    study = create_study(study_name, location, search, max_epochs=max_epochs(search, base.train.epochs))
    fail_abandoned_trials(study)
    parent = parent_run(study, base.mlflow.experiment_name)
    failure = None
    if not arguments.report_only:
        try:
            run_workers(path, search, study, location, workers=arguments.workers)
        except KeyboardInterrupt:
            end_parent_run(study, parent, "KILLED")  # no report: the user asked to stop, and it would retrain
            raise
        except PipelineError as error:
            failure = error  # a worker failed: the trials run so far are reported all the same
    if not arguments.no_report:
        logger.info("report: %s", write_report(study, search, path, parent_run_id=parent) / "README.md")
    end_parent_run(study, parent, "FAILED" if failure else "FINISHED")
    if failure:
        raise failure


def parent_run(study: optuna.Study, experiment_name: str) -> str:
    """The study's MLflow run, parent of every trial's: created by the first `mlp search`, reopened by the next."""
    run_id = study.user_attrs.get(PARENT_RUN_ATTRIBUTE)
    if run_id:
        client().update_run(run_id, status="RUNNING")
        return run_id
    tags = {"search.study": study.study_name, "search.role": "study"}
    run = client().create_run(experiment_id(experiment_name), run_name=f"search {study.study_name}", tags=tags)
    study.set_user_attr(PARENT_RUN_ATTRIBUTE, run.info.run_id)
    return run.info.run_id


def end_parent_run(study: optuna.Study, run_id: str, status: str) -> None:
    """End the study's run, unless trials still run (workers of another machine): then the last to stop ends it."""
    if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        client().set_terminated(run_id, status)


def run_workers(path: Path, search: Search, study: optuna.Study, location: str, *, workers: int) -> None:
    """Run the workers until each has found the budget spent; show the study's progress meanwhile."""
    deadline = time.time() + 60 * (search.budget.timeout_minutes or 10**9)
    logs = [log_directory(study.study_name) / f"worker-{index}.log" for index in range(workers)]
    command = [sys.executable, "-m", "pipeline.search.worker", str(path), study.study_name, str(deadline)]
    environment = os.environ | {STORAGE_VARIABLE: location}
    processes = []
    for log in logs:
        with log.open("a", encoding="utf-8") as stream:
            # A process group of its own: Ctrl+C reaches this process only, which stops each worker once, by SIGTERM.
            processes.append(Popen(command, env=environment, stdout=stream, stderr=STDOUT, process_group=0))
    try:
        with tqdm(total=search.budget.n_trials, desc=study.study_name, unit="trial", dynamic_ncols=True) as bar:
            while any(process.poll() is None for process in processes):
                show_progress(bar, study)
                time.sleep(POLL_SECONDS)
            show_progress(bar, study)
    except KeyboardInterrupt:
        logger.warning("interrupted: stopping the workers and their trials")
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
        raise
    failed = [str(log) for log, process in zip(logs, processes, strict=True) if process.returncode != 0]
    if failed:
        raise PipelineError(f"{len(failed)} of {workers} workers failed: see {', '.join(failed)}")


def show_progress(bar: tqdm, study: optuna.Study) -> None:
    counts = Counter(trial.state for trial in study.get_trials(deepcopy=False))
    bar.n = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    bar.set_postfix(
        done=counts[TrialState.COMPLETE],
        pruned=counts[TrialState.PRUNED],
        failed=counts[TrialState.FAIL],
        running=counts[TrialState.RUNNING],
        best=f"{study.best_value:.4f}" if counts[TrialState.COMPLETE] else "-",
    )
