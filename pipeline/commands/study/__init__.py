"""Re-run a published table of configurations through the pipeline and compare.

    mlp study atienza_table_1_3_2

A study (conf/study/<name>.yaml) lists rows in the publication's own notation
(layers, regularizer, optimizer, ReLU or not) with the published training and
test accuracy. Each row becomes one DVC experiment, queued with
`dvc exp run --queue` and run by DVC's queue one at a time, so `dvc exp show`
lists them and every row is an MLflow run in the study's MLflow experiment.
The report (Markdown, CSV and a plot, in reports/studies/<name>/) puts the
measured accuracies beside the published ones.

Interrupted (Ctrl+C, SIGTERM), the study stops its queued and running rows;
run the same command again and it continues: rows whose DVC experiment exists
for the current commit are not trained again. Results belong to the commit
they ran from, so after a new commit every row runs again.
"""

from __future__ import annotations

import argparse
import logging

from pipeline.commands.study.report import report_directory, write_report
from pipeline.commands.study.runner import (
    current_commit,
    finished_experiments,
    resolve_baseline,
    row_result,
    run_rows,
)
from pipeline.commands.study.schema import check_rows, experiment_name, load_study, study_path
from pipeline.errors import ConfigError, PipelineError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="a study in conf/study/ (e.g. atienza_table_1_3_2) or a path to a study file")
    parser.add_argument(
        "--report-only", action="store_true", help="write the report from the rows already run; train nothing"
    )
    parser.add_argument(
        "--baseline",
        metavar="REVISION",
        help="with --report-only: report the experiments run from this commit (default: the current one)",
    )


def run(arguments: argparse.Namespace) -> None:
    """Run the study's rows not yet run from the current commit, then write its report."""
    path = study_path(arguments.study)
    study = load_study(path)
    study_name = path.stem
    check_rows(study)
    commit = current_commit()
    if arguments.baseline:
        if not arguments.report_only:
            raise ConfigError("--baseline reports earlier runs: use it with --report-only")
        commit = resolve_baseline(arguments.baseline)

    done = finished_experiments(commit)
    pending = [row for row in study.rows if experiment_name(study_name, row) not in done]
    logger.info(
        "%s: %d of %d rows already run from commit %s",
        study_name,
        len(study.rows) - len(pending),
        len(study.rows),
        commit[:12],
    )
    if pending and not arguments.report_only:
        run_rows(pending, study=study, study_name=study_name)
        done = finished_experiments(commit)

    results = [
        row_result(row, study_name=study_name, commit=done.get(experiment_name(study_name, row))) for row in study.rows
    ]
    directory = report_directory(study_name)
    facts = write_report(results, study=study, study_name=study_name, commit=commit, directory=directory)
    logger.info("report: %s (%d of %d rows measured)", directory / "README.md", facts.measured, facts.rows)
    missing = [result.experiment for result in results if not result.done]
    if missing and not arguments.report_only:
        raise PipelineError(f"rows not run: {', '.join(missing)}; run the same command again to retry them")
