"""Start, stop and describe the whole stack: PostgreSQL, then the MLflow server in front of it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from filelock import FileLock, Timeout

from pipeline.server import mlflow_server, postgres
from pipeline.server.state import ADMIN_USERNAME, Runtime, ServerError, Settings, StateFolder

logger = logging.getLogger(__name__)


@contextmanager
def locked(state: StateFolder) -> Iterator[None]:
    """One `mlp server` command at a time per state folder."""
    state.create()
    try:
        with FileLock(state.lock_file, timeout=1):
            yield
    except Timeout:
        raise ServerError(f"another `mlp server` command is running on {state.root} (lock {state.lock_file})") from None


def resolve_settings(state: StateFolder, overrides: dict) -> Settings:
    """The saved settings with the given ones applied; checked: a server others can reach must ask for passwords."""
    given = {name: value for name, value in overrides.items() if value is not None}
    settings = replace(state.load_settings() or Settings(), **given)
    if not settings.auth and not mlflow_server.is_loopback(settings.host):
        raise ServerError(
            f"--host {settings.host} makes the server reachable from other machines, which needs authentication: "
            "drop --no-auth, or keep --host 127.0.0.1"
        )
    if settings.workers < 1 or not 0 < settings.port < 65536:
        raise ServerError(f"--workers {settings.workers} / --port {settings.port}: need workers >= 1, port 1-65535")
    return settings


def start(state: StateFolder, overrides: dict) -> tuple[Runtime, bool]:
    """Start what is not running (after a crash, only that); (what runs, whether anything was started)."""
    runtime = state.load_runtime()
    running = mlflow_server.is_running(runtime)
    settings = resolve_settings(state, overrides)
    if running and postgres.running_port(state) and mlflow_server.healthy(runtime.url):
        saved = state.load_settings()
        if saved is not None and saved != settings:
            raise ServerError(f"the server runs with other settings ({saved}): `mlp server stop` first to change them")
        return runtime, False
    if running:  # PostgreSQL died under it, or it stopped answering: restart it whole
        logger.warning("MLflow server (pid %d) does not answer: restarting it", runtime.mlflow_pid)
        mlflow_server.stop_process_group(runtime.mlflow_pid)
    elif runtime is not None:
        logger.warning("MLflow server (pid %d) is gone without `mlp server stop`: restarting it", runtime.mlflow_pid)
        mlflow_server.stop_process_group(runtime.mlflow_pid)  # workers it may have left behind
    if not mlflow_server.is_loopback(settings.host):
        logger.warning(
            "listening on %s: reachable from other machines, over plain HTTP: every request needs a user name and "
            "password (basic auth); put TLS in front of it (a reverse proxy) before using it across a network",
            settings.host,
        )
    runtime = launch(state, settings)
    state.save_settings(settings)  # once they worked: a refused port is not the next start's default
    return runtime, True


def launch(state: StateFolder, settings: Settings) -> Runtime:
    began = time.monotonic()
    state.admin_password()  # generated now, so that it exists before anything can use it
    state.write_pgpass()
    if not postgres.initialized(state):
        logger.info("creating the PostgreSQL data folder %s", state.postgres_data)
        postgres.initialize(state)
    port = postgres.start(state)
    postgres.create_databases(state, port)
    if settings.artifacts_destination is None:
        state.artifacts.mkdir(exist_ok=True)
    logger.info("PostgreSQL on 127.0.0.1:%d; starting the MLflow server", port)
    runtime = mlflow_server.launch(state, settings, port)
    state.save_runtime(runtime)
    logger.info("MLflow server at %s, started in %.1f s", runtime.url, time.monotonic() - began)
    return runtime


def stop(state: StateFolder) -> list[str]:
    """Stop the MLflow server, then PostgreSQL; what was stopped."""
    stopped = []
    runtime = state.load_runtime()
    if runtime is not None:
        if mlflow_server.is_running(runtime):
            stopped.append(f"MLflow server (pid {runtime.mlflow_pid})")
        mlflow_server.stop_process_group(runtime.mlflow_pid)  # also workers a crashed server left behind
    state.clear_runtime()
    running = postgres.running_port(state)
    if running and postgres.stop(state):
        stopped.append(f"PostgreSQL (pid {running[0]})")
    return stopped


def status(state: StateFolder) -> tuple[list[str], bool]:
    """One line per component: what runs, where; and whether the whole stack runs and answers."""
    settings = state.load_settings()
    if settings is None and not postgres.initialized(state):
        return [f"no server here: {state.root} has none (`mlp server start` creates it)"], False
    settings = settings or Settings()
    runtime = state.load_runtime()
    running = mlflow_server.is_running(runtime)
    answers = running and mlflow_server.healthy(runtime.url)
    if answers:
        mlflow_line = f"running, pid {runtime.mlflow_pid}, {runtime.url} (listening on {settings.host}:{settings.port})"
    elif running:
        mlflow_line = f"NOT ANSWERING, pid {runtime.mlflow_pid}, {runtime.url}: `mlp server start` restarts it"
    elif runtime is not None:
        mlflow_line = f"CRASHED (pid {runtime.mlflow_pid} is gone): `mlp server start` restarts it"
    else:
        mlflow_line = "stopped"
    database = postgres.running_port(state)
    database_line = f"running, pid {database[0]}, 127.0.0.1:{database[1]}" if database else "stopped"
    auth_line = f"basic auth, user {ADMIN_USERNAME}, password in {state.admin_password_file}"
    lines = [
        f"mlflow      {mlflow_line}",
        f"postgresql  {database_line}, data {state.postgres_data}",
        f"artifacts   {state.artifacts_destination(settings)}",
        f"auth        {auth_line if settings.auth else 'none (loopback only)'}",
        f"logs        {state.logs}",
    ]
    return lines, bool(answers and database)
