"""`mlp params`: compose conf/ into params.yaml, as `dvc exp run` does, without running anything."""

import argparse
from pathlib import Path

from pipeline.config import compose, parse_params
from pipeline.files import write_text
from pipeline.paths import PARAMS_FILE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.dropout_rate=0.3 optimizer=sgd")
    parser.add_argument("--output", type=Path, default=PARAMS_FILE, help="where to write (default: %(default)s)")


def run(arguments: argparse.Namespace) -> None:
    text = compose(arguments.overrides)
    parse_params(text, arguments.output)  # refuse to write a composition no stage would accept
    write_text(arguments.output, text)
