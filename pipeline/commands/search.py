"""`mlp search`: check the search file and the study's name, then run the search (pipeline.search)."""

from __future__ import annotations

import argparse
import re

from pipeline.errors import ConfigError
from pipeline.search.schema import Search, check_values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("search", help="a search in conf/search/ (e.g. mnist) or a path to a search file")
    parser.add_argument("--workers", type=int, default=1, help="trials run at once on this machine (default 1)")
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
    path = Search.path_of(arguments.search)
    search = Search.load(path)
    if arguments.workers < 0 or (arguments.workers == 0 and not arguments.report_only):
        raise ConfigError(f"--workers {arguments.workers}: give 1 or more")
    study_name = arguments.study or path.stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", study_name):
        # It names a folder, DVC experiments and an experiment file.
        raise ConfigError(f"study name {study_name!r}: use letters, digits, '_' and '-' only")
    check_values(search, path)
    # Only now: a refused file or name is told in a second, without loading Optuna, MLflow and TensorFlow.
    from pipeline.search.coordinator import run_search

    run_search(arguments, path, search, study_name)
