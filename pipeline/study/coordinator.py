"""What `mlp study` does: run the study's rows not yet run from the current commit, then write its report.

A row is done when its DVC experiment exists for the commit the study runs
from (pipeline.study.runner); the report (pipeline.study.report) puts what
the rows measured beside the published figures.
"""

from __future__ import annotations

import logging

from pipeline.errors import ConfigError, PipelineError
from pipeline.study.report import report_directory, write_report
from pipeline.study.runner import (
    current_commit,
    finished_experiments,
    resolve_baseline,
    row_result,
    run_rows,
)
from pipeline.study.schema import check_rows, experiment_name, load_study, study_path

logger = logging.getLogger(__name__)


def run_study(name_or_path: str, *, report_only: bool, baseline: str | None) -> None:
    """Run the study's rows not yet run from the current commit, then write its report."""
    path = study_path(name_or_path)
    study = load_study(path)
    study_name = path.stem
    check_rows(study)
    commit = current_commit()
    if baseline:
        if not report_only:
            raise ConfigError("--baseline reports earlier runs: use it with --report-only")
        commit = resolve_baseline(baseline)

    done = finished_experiments(commit)
    pending = [row for row in study.rows if experiment_name(study_name, row) not in done]
    logger.info(
        "%s: %d of %d rows already run from commit %s",
        study_name,
        len(study.rows) - len(pending),
        len(study.rows),
        commit[:12],
    )
    if pending and not report_only:
        run_rows(pending, study=study, study_name=study_name)
        done = finished_experiments(commit)

    results = [
        row_result(row, study_name=study_name, commit=done.get(experiment_name(study_name, row))) for row in study.rows
    ]
    directory = report_directory(study_name)
    facts = write_report(results, study=study, study_name=study_name, commit=commit, directory=directory)
    logger.info("report: %s (%d of %d rows measured)", directory / "README.md", facts.measured, facts.rows)
    missing = [result.experiment for result in results if not result.done]
    if missing and not report_only:
        raise PipelineError(f"rows not run: {', '.join(missing)}; run the same command again to retry them")
