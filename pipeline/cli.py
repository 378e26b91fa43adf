"""`mlp`: the project's command-line tool, one subcommand per command in pipeline/commands/.

The DVC stages are not here: `dvc repro` runs them as `python -m pipeline.<stage>`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.stage import run_stage

# Name -> one-line help. Each module is imported only when its command runs:
# `mlp --help` must not wait for TensorFlow, MLflow and DVC to load.
COMMANDS = {
    "params": "compose conf/ into params.yaml, as `dvc exp run` does",
    "reproduce": "re-run a recorded MLflow run from its lineage and compare, or check repeatability",
    "diff": "why two MLflow runs differ (params, code, data, environment) and whether their accuracies really do",
    "tolerance": "measure how far the test metrics move across seeds, for reproduce to judge other machines by",
    "search": "search hyperparameters with Optuna: every trial a DVC experiment and an MLflow run, pruned, resumable",
    "study": "re-run a published table of configurations as DVC experiments and report",
    "server": "run the team's tracking server (PostgreSQL + MLflow with basic auth): start, stop, status, backup",
    "predict": "classify images or feature rows with the trained model or a registered one",
    "serve": "serve a registered model over HTTP (MLflow's scoring server, one-line errors), on 127.0.0.1",
    "dataset": "add a dataset: write conf/dataset/<name>.yaml from local copies of its published files",
    "ui": "open the MLflow UI on the project's runs: start `mlflow ui` and print the link to the experiment",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="mlp", description="Keras MLP pipeline: commands beside the DVC stages (`dvc repro` runs those)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The subcommand is the first word that is not an option: only its module is imported.
    command = next((argument for argument in argv if not argument.startswith("-")), None)
    for name, summary in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=summary, description=summary)
        if name == command:
            importlib.import_module(f"pipeline.commands.{name}").add_arguments(subparser)
    arguments = parser.parse_args(argv)
    run_stage(lambda: importlib.import_module(f"pipeline.commands.{arguments.command}").run(arguments))


if __name__ == "__main__":
    main()
