"""Many writers at once, against the team server and against a local SQLite store, in one invocation.

    python benchmarks/tracking_load.py [--writers 16] [--metrics 50] [--steps 200] [--artifacts 5]
                                       [--server-workers 4] [--output FILE]

Each writer is a process with a run of its own: per step one `log_batch` of every metric (as a
training loop logs an epoch), then its artifacts (small files), then the run ends. The server is a
temporary `mlp server start` (PostgreSQL + MLflow with basic auth on a free port of 127.0.0.1, in a
temporary state folder, stopped at the end); the SQLite store is a temporary file. Afterwards every
point and artifact is counted back through the API: the table gives errors, lost points and
points per second (all points over the wall time from the first writer's start to the last one's end).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

REPOSITORY = Path(__file__).resolve().parents[1]
EXPERIMENT = "tracking-load"
ARTIFACT_BYTES = 10_000


@dataclass
class Result:
    store: str
    writers: int
    points_expected: int
    points_found: int
    artifacts_expected: int
    artifacts_found: int
    errors: int
    seconds: float

    @property
    def points_per_second(self) -> float:
        return self.points_found / self.seconds if self.seconds else 0.0


def write_one_run(uri: str, experiment_id: str, metrics: int, steps: int, artifacts: int) -> dict:
    """One writer: a run with `metrics` x `steps` points and `artifacts` files; its times and errors."""
    began = time.time()
    errors = []
    client = MlflowClient(uri)
    try:
        run_id = client.create_run(experiment_id).info.run_id
    except Exception as error:  # counted, not raised: the table says how many writers failed
        return {"began": began, "ended": time.time(), "errors": [repr(error)], "run_id": None}
    for step in range(steps):
        stamp = int(time.time() * 1000)
        batch = [Metric(f"metric_{index:02d}", step * 0.001 + index, stamp, step) for index in range(metrics)]
        try:
            client.log_batch(run_id, metrics=batch)
        except Exception as error:
            errors.append(repr(error))
    with tempfile.TemporaryDirectory() as folder:
        for index in range(artifacts):
            path = Path(folder) / f"artifact_{index}.bin"
            path.write_bytes(os.urandom(ARTIFACT_BYTES))
            try:
                client.log_artifact(run_id, str(path))
            except Exception as error:
                errors.append(repr(error))
    try:
        client.set_terminated(run_id)
    except Exception as error:
        errors.append(repr(error))
    return {"began": began, "ended": time.time(), "errors": errors, "run_id": run_id}


def writer(barrier, results, *work) -> None:
    barrier.wait()  # every writer has imported MLflow: the clock measures logging, not imports
    results.put(write_one_run(*work))


def run_writers(uri: str, experiment_id: str, arguments: argparse.Namespace) -> list[dict]:
    # spawn, not fork: a forked writer would share the parent's open HTTP connections.
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(arguments.writers), context.Queue()
    work = (uri, experiment_id, arguments.metrics, arguments.steps, arguments.artifacts)
    processes = [context.Process(target=writer, args=(barrier, results, *work)) for _ in range(arguments.writers)]
    for process in processes:
        process.start()
    outcomes = [results.get() for _ in processes]
    for process in processes:
        process.join()
    return outcomes


def measure(store: str, uri: str, arguments: argparse.Namespace) -> Result:
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(f"{EXPERIMENT}-{int(time.time())}")  # creates (migrates) the store first
    outcomes = run_writers(uri, experiment_id, arguments)
    seconds = max(outcome["ended"] for outcome in outcomes) - min(outcome["began"] for outcome in outcomes)
    errors = [error for outcome in outcomes for error in outcome["errors"]]
    for error in errors[:5]:
        print(f"{store}: {error}", file=sys.stderr)
    run_ids = [outcome["run_id"] for outcome in outcomes if outcome["run_id"]]
    points = sum(
        len(client.get_metric_history(run_id, f"metric_{index:02d}"))
        for run_id in run_ids
        for index in range(arguments.metrics)
    )
    files = sum(len(client.list_artifacts(run_id)) for run_id in run_ids)
    expected_points = arguments.writers * arguments.metrics * arguments.steps
    return Result(
        store, arguments.writers, expected_points, points, arguments.writers * arguments.artifacts, files,
        len(errors) + arguments.writers - len(run_ids), seconds,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def mlp_server(state: Path, *arguments: str) -> str:
    command = [str(Path(sys.executable).parent / "mlp"), "server", *arguments, "--state-dir", str(state)]
    return subprocess.run(command, cwd=REPOSITORY, check=True, capture_output=True, text=True).stdout


def against_server(folder: Path, arguments: argparse.Namespace) -> Result:
    state, port = folder / "server", free_port()
    began = time.monotonic()
    mlp_server(state, "start", "--port", str(port), "--workers", str(arguments.server_workers))
    print(f"server started in {time.monotonic() - began:.1f} s", file=sys.stderr)
    os.environ["MLFLOW_TRACKING_USERNAME"] = "admin"
    os.environ["MLFLOW_TRACKING_PASSWORD"] = (state / "admin_password").read_text().strip()
    try:
        return measure(f"server ({arguments.server_workers} workers)", f"http://127.0.0.1:{port}", arguments)
    finally:
        mlp_server(state, "stop")
        for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(variable, None)


def against_sqlite(folder: Path, arguments: argparse.Namespace) -> Result:
    return measure("SQLite file", f"sqlite:///{folder / 'mlflow.db'}", arguments)


def table(results: list[Result]) -> str:
    lines = [
        "| store | writers | points found / expected | artifacts found / expected | errors | seconds | points/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        lines.append(
            f"| {result.store} | {result.writers} | {result.points_found:,} / {result.points_expected:,} "
            f"| {result.artifacts_found} / {result.artifacts_expected} | {result.errors} "
            f"| {result.seconds:.1f} | {result.points_per_second:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--metrics", type=int, default=50)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--artifacts", type=int, default=5)
    parser.add_argument("--server-workers", type=int, default=4)
    parser.add_argument("--output", type=Path, help="also write the results as JSON")
    arguments = parser.parse_args()
    # Nothing from the caller's environment: each store is named explicitly.
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        os.environ.pop(variable, None)
    with tempfile.TemporaryDirectory(prefix="tracking-load.") as folder:
        results = [against_server(Path(folder), arguments), against_sqlite(Path(folder), arguments)]
    print(table(results))
    if arguments.output:
        rows = [{**asdict(result), "points_per_second": result.points_per_second} for result in results]
        arguments.output.write_text(json.dumps(rows, indent=2) + "\n")
    if any(result.errors or result.points_found != result.points_expected for result in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
