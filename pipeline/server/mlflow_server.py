"""The `mlflow server` process: launch it detached, wait until it answers, find it again, stop it."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from pipeline.server.state import DATABASE_ROLE, TRACKING_DATABASE, Runtime, ServerError, Settings, StateFolder

START_TIMEOUT_SECONDS = 180  # workers import MLflow in parallel; on 2 busy cores that takes a while
STOP_TIMEOUT_SECONDS = 30
# The caller's own MLflow settings must not leak into the server (a tracking URI pointing at
# itself, a client's password).
CLIENT_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PGPASSWORD")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def client_url(settings: Settings) -> str:
    """The URL a client on this machine uses: a wildcard bind address is reached on loopback."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}"


def check_port_free(settings: Settings) -> None:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family) as probe:
        # As uvicorn binds: connections of a previous server in TIME_WAIT do not make the port busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.host, settings.port))
        except OSError as error:
            raise ServerError(
                f"cannot listen on {settings.host}:{settings.port} ({error.strerror}): "
                "choose another port with `mlp server start --port N`"
            ) from None


def command(state: StateFolder, settings: Settings, postgres_port: int) -> list[str]:
    backend = f"postgresql://{DATABASE_ROLE}@127.0.0.1:{postgres_port}/{TRACKING_DATABASE}"
    arguments = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend]
    arguments += ["--artifacts-destination", state.artifacts_destination(settings), "--serve-artifacts"]
    arguments += ["--host", settings.host, "--port", str(settings.port), "--workers", str(settings.workers)]
    if settings.allowed_hosts:
        arguments += ["--allowed-hosts", settings.allowed_hosts]
    if settings.auth:
        arguments += ["--app-name", "basic-auth"]
    return arguments


def environment(state: StateFolder, settings: Settings) -> dict[str, str]:
    variables = {name: value for name, value in os.environ.items() if name not in CLIENT_VARIABLES}
    variables["PGPASSFILE"] = str(state.pgpass_file)
    if settings.auth:
        variables["MLFLOW_AUTH_CONFIG_PATH"] = str(state.auth_config_file)
        variables["MLFLOW_FLASK_SERVER_SECRET_KEY"] = state.secrets()["flask_secret_key"]
    return variables


def launch(state: StateFolder, settings: Settings, postgres_port: int) -> Runtime:
    """Start `mlflow server` in a session of its own (it outlives `mlp`); return once it answers."""
    check_port_free(settings)
    if settings.auth:
        state.write_auth_config(postgres_port)
    log_path = state.logs / "mlflow.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command(state, settings, postgres_port),
            env=environment(state, settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: `stop` ends the workers with it
            cwd=state.root,
        )
    runtime = Runtime(process.pid, psutil.Process(process.pid).create_time(), postgres_port, client_url(settings))
    wait_until_healthy(process, runtime.url, log_path)
    return runtime


def wait_until_healthy(process: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"mlflow server exited during start-up (status {process.returncode}): see {log_path}")
        if healthy(url):
            return
        time.sleep(0.5)
    stop_process_group(process.pid)
    raise ServerError(f"mlflow server did not answer within {START_TIMEOUT_SECONDS} s: see {log_path}")


def healthy(url: str) -> bool:
    # /health needs no credentials, also under basic auth.
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def is_running(runtime: Runtime | None) -> bool:
    """Whether the process `start` launched still runs (not another that got its pid since)."""
    if runtime is None:
        return False
    try:
        process = psutil.Process(runtime.mlflow_pid)
        return abs(process.create_time() - runtime.mlflow_started) < 1 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_process_group(group: int) -> None:
    """SIGTERM to the server's process group (the CLI and its uvicorn workers), SIGKILL after a grace period.

    The group's id is the pid of the `mlflow server` process `launch` started in a new session. It
    outlives that process while any worker does (a crash of the CLI alone leaves them serving), and
    Linux hands out no pid equal to a live group's id, so the signal reaches only what `launch` started.
    """
    members = [process for process in psutil.process_iter() if _group_of(process) == group]
    for sent in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sent)
        except ProcessLookupError:
            return
        _, alive = psutil.wait_procs(members, timeout=STOP_TIMEOUT_SECONDS)
        if not alive:
            return


def _group_of(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None
