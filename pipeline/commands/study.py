"""`mlp study`: re-run a published table of configurations through the pipeline and compare.

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

The study itself is the package pipeline.study: the study file (schema), the
rows as DVC experiments (runner), the report (report).
"""

from __future__ import annotations

import argparse

from pipeline.study.coordinator import run_study


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
    run_study(arguments.study, report_only=arguments.report_only, baseline=arguments.baseline)
