"""`mlp ui [--port N]`: `mlflow ui` on 127.0.0.1 on the store the stages log to, and the link to params.yaml's
experiment in MLflow's model-training view (test and validation accuracy, the params that differ between runs).
With a tracking server (MLFLOW_TRACKING_URI=http...) it only prints the link on that server. Ctrl-C stops it.
"""

import argparse
import subprocess
import sys

import mlflow

from pipeline.config import load_params
from pipeline.errors import ConfigError
from pipeline.server.stack import wait_until_serving
from pipeline.server.state import free_port
from pipeline.tracking import experiment_link, open_store, save_runs_view

VIEW = "mlp-ui"
METRICS = ["test_accuracy", "val_accuracy"]
# Columns beyond these the table has to scroll for.
MAX_PARAM_COLUMNS = 8
STARTUP_SECONDS = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, help="the port to serve on (default: a free one)")


def run(arguments: argparse.Namespace) -> None:
    uri = open_store()
    name = load_params().mlflow.experiment_name
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        raise ConfigError(f"MLflow experiment '{name}' has no runs in {uri} yet: run `dvc repro` first")
    save_runs_view(experiment.experiment_id, VIEW, metrics=METRICS, params=differing_params(experiment.experiment_id))
    if uri.startswith(("http://", "https://")):
        print(experiment_link(uri, experiment.experiment_id, VIEW))
        return
    port = arguments.port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = ["mlflow", "ui", "--backend-store-uri", uri, "--registry-store-uri", uri, "--port", str(port)]
    # The server's own messages to stderr: this command's output is the link.
    server = subprocess.Popen([sys.executable, "-m", *command, "--host", "127.0.0.1"], stdout=sys.stderr)
    try:
        wait_until_serving(server, base_url, STARTUP_SECONDS, "mlflow ui")
        print(experiment_link(base_url, experiment.experiment_id, VIEW), flush=True)
        server.wait()
    finally:
        server.terminate()
        server.wait()


def differing_params(experiment_id: str) -> list[str]:
    """The params whose values differ between the experiment's runs: what a reader compares them by."""
    params = mlflow.search_runs([experiment_id], max_results=1000).filter(regex=r"^params\.")
    return sorted(name.removeprefix("params.") for name in params if params[name].nunique() > 1)[:MAX_PARAM_COLUMNS]
