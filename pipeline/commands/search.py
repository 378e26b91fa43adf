"""`mlp search`: search hyperparameters with Optuna; every trial is a DVC experiment and an MLflow run.

    mlp search mnist --workers 2 [--storage postgresql+psycopg://...] [--study NAME]

The search itself is the package pipeline.search: its __init__ says how a
search runs, where its study is kept and what the report holds.
"""

from __future__ import annotations

import argparse

from pipeline.search.coordinator import run_search


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("search", help="a search in conf/search/ (e.g. mnist) or a path to a search file")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="the study's storage: postgresql+psycopg://... to share it between machines "
        "(default: $MLP_SEARCH_STORAGE, else a journal file in .search/<study>/)",
    )
    parser.add_argument("--study", help="the study's name (default: the search's)")
    reporting = parser.add_mutually_exclusive_group()
    reporting.add_argument("--report-only", action="store_true", help="write the report from the trials run; run none")
    reporting.add_argument(
        "--no-report",
        action="store_true",
        help="run trials only (e.g. on a machine joining a study another one reports): no test evaluation",
    )


def run(arguments: argparse.Namespace) -> None:
    """Check the search, run its trials to the budget on `--workers` processes, write the report."""
    run_search(
        arguments.search,
        workers=arguments.workers,
        storage=arguments.storage,
        study_name=arguments.study,
        report_only=arguments.report_only,
        no_report=arguments.no_report,
    )
