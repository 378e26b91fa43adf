"""`mlp study NAME`: re-run a published table (conf/study/<name>.yaml) as DVC experiments, one row at a
time, and write reports/studies/<name>/ (pipeline.study). Interrupted (Ctrl+C, SIGTERM), it stops its
running row; run again, it trains only the rows with no DVC experiment from the current commit."""

from __future__ import annotations

import argparse
import logging

from pipeline.errors import ConfigError, PipelineError
from pipeline.paths import STUDY_REPORTS_DIRECTORY
from pipeline.study.report import write_report
from pipeline.study.runner import current_commit, finished_experiments, measure, resolve_baseline, run_experiment
from pipeline.study.schema import Study, check_rows, experiment_name

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
    path = Study.path_of(arguments.study)
    study, name = Study.load(path), path.stem
    check_rows(study)
    commit = current_commit()
    if arguments.baseline:
        if not arguments.report_only:
            raise ConfigError("--baseline reports earlier runs: use it with --report-only")
        commit = resolve_baseline(arguments.baseline)

    done = finished_experiments(commit)
    pending = [row for row in study.rows if experiment_name(name, row) not in done]
    rows = len(study.rows)
    logger.info("%s: %d of %d rows already run from commit %s", name, rows - len(pending), rows, commit[:12])
    if pending and not arguments.report_only:
        # One at a time: rows sharing the CPU would not compare by wall time.
        for row in pending:
            if run_experiment(experiment_name(name, row), study.overrides + row.overrides()) != 0:
                logger.warning("row %s failed; the report lists it as missing", row.row)
        done = finished_experiments(commit)

    results = [(row, measure(row, done.get(experiment_name(name, row)))) for row in study.rows]
    directory = STUDY_REPORTS_DIRECTORY / name
    write_report(results, study=study, study_name=name, commit=commit, directory=directory)
    missing = [experiment_name(name, row) for row, measured in results if measured is None]
    logger.info("report: %s (%d of %d rows measured)", directory / "README.md", rows - len(missing), rows)
    if missing and not arguments.report_only:
        raise PipelineError(f"rows not run: {', '.join(missing)}; run the same command again to retry them")
