"""`mlp server start|stop|status|backup|restore`: the team's tracking server on this machine (pipeline/server/).

`start` starts whatever is not running (after a crash, what died) and keeps the settings it is given
for the next start; `status` exits 3 unless the whole stack runs and answers.
"""

import argparse
import os
import sys
from pathlib import Path

from mlflow.utils.rest_utils import MlflowHostCreds, http_request

from pipeline.server import backup, stack
from pipeline.server.state import ADMIN_USERNAME, STATE_DIRECTORY, Settings, StateFolder
from pipeline.tracking import experiment_link

NOT_RUNNING = 3  # the LSB status code for "not running", as `systemctl status` uses


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = actions.add_parser("start", help="start PostgreSQL and the MLflow server (a no-op when running)")
    start.add_argument("--host", help="address to listen on (default 127.0.0.1; another needs auth)")
    start.add_argument("--port", type=int, help="the MLflow server's port (default 5000)")
    start.add_argument("--workers", type=int, help="MLflow server worker processes (default 4)")
    start.add_argument(
        "--artifacts-destination",
        help="where artifacts go: a folder or a URI such as s3://bucket/path (default: the state folder's artifacts/)",
    )
    start.add_argument("--allowed-hosts", help="extra Host headers to accept, e.g. mlflow.example.org:5000")
    start.add_argument(
        "--postgres-host", help="PostgreSQL's address besides 127.0.0.1, for searches on other machines (password only)"
    )
    start.add_argument("--postgres-port", type=int, help="PostgreSQL's port (default: chosen at the first start)")
    start.add_argument("--no-auth", dest="auth", action="store_false", default=None, help="no passwords; loopback only")
    actions.add_parser("stop", help="stop the MLflow server and PostgreSQL")
    actions.add_parser("status", help="what runs where; exit status 3 when not running")
    archive = actions.add_parser("backup", help="dump the databases and copy the artifacts into one archive")
    archive.add_argument("--output", type=Path, help="the archive to write (default: backups/ in the state folder)")
    restore = actions.add_parser("restore", help="replace the server's databases and artifacts with an archive's")
    restore.add_argument("archive", type=Path)
    state_dir = Path(os.environ.get("MLP_SERVER_STATE", STATE_DIRECTORY))
    state_help = "the server's state folder (default: $MLP_SERVER_STATE or %(default)s)"
    for action in actions.choices.values():
        action.add_argument("--state-dir", type=Path, default=state_dir, help=state_help)


def run(arguments: argparse.Namespace) -> None:
    state = StateFolder(arguments.state_dir)
    if arguments.action == "status":
        lines, running = stack.status(state)
        print("\n".join(lines))
        if not running:
            sys.exit(NOT_RUNNING)
        return
    with stack.locked(state):
        if arguments.action == "start":
            start(state, arguments)
        elif arguments.action == "stop":
            stopped = stack.stop(state)
            print("stopped: " + ", ".join(stopped) if stopped else "nothing was running")
        elif arguments.action == "backup":
            print(backup.backup(state, arguments.output))
        else:
            print(backup.restore(state, arguments.archive))


def start(state: StateFolder, arguments: argparse.Namespace) -> None:
    runtime, started = stack.start(state, {name: getattr(arguments, name) for name in Settings.model_fields})
    print(f"MLflow server {'started' if started else 'already running'} at {runtime.url}")
    print(f"use it with:\n  export MLFLOW_TRACKING_URI={runtime.url}")
    credentials = MlflowHostCreds(runtime.url)
    if state.load_settings().auth:
        print(f"  export MLFLOW_TRACKING_USERNAME={ADMIN_USERNAME}")
        print(f'  export MLFLOW_TRACKING_PASSWORD="$(cat {state.admin_password_file})"')
        credentials = MlflowHostCreds(runtime.url, username=ADMIN_USERNAME, password=state.admin_password())
    if not started:
        return
    # The runs of each pipeline experiment, in the UI's model-training view (MLflow 3 opens GenAI otherwise);
    # at a start only, since composing every experiment file takes seconds.
    for name in sorted(stack.pipeline_names()[0]):
        found = http_request(
            credentials, "/api/2.0/mlflow/experiments/get-by-name", "GET", params={"experiment_name": name}
        )
        if found.ok:
            print(f"runs of {name}: {experiment_link(runtime.url, found.json()['experiment']['experiment_id'])}")
