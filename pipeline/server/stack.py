"""The whole stack: PostgreSQL, then `mlflow server` in front of it, launched detached; start, stop, status."""

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
from filelock import FileLock, Timeout
from mlflow.utils.rest_utils import MlflowHostCreds, http_request
from pydantic import ValidationError

from pipeline.config import compose, read_yaml
from pipeline.files import PRIVATE, write_text
from pipeline.paths import CONFIG_DIRECTORY
from pipeline.server import postgres
from pipeline.server.state import (
    ADMIN_USERNAME,
    Runtime,
    ServerError,
    Settings,
    StateFolder,
    check_port_free,
    is_loopback,
)

logger = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 180  # workers import MLflow in parallel; on 2 busy cores that takes a while
STOP_TIMEOUT_SECONDS = 30
# Checking a password (scrypt) costs about 0.25 s of CPU, twice per request without MLflow's cache: 2 cores
# then serve a few requests a second. Cached, a changed or deleted password keeps working on the other
# workers for up to this many seconds.
AUTH_CACHE_SECONDS = 60
# The caller's own MLflow settings must not leak into the server (a tracking URI pointing at itself, a password).
CLIENT_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PGPASSWORD")


@contextmanager
def locked(state: StateFolder) -> Iterator[None]:
    """One `mlp server` command at a time per state folder."""
    state.create()
    try:
        with FileLock(state.lock_file, timeout=1):
            yield
    except Timeout:
        raise ServerError(f"another `mlp server` command is running on {state.root} (lock {state.lock_file})") from None


def client_url(settings: Settings) -> str:
    """The URL a client on this machine uses: a wildcard bind address is reached on loopback."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}"


def resolve_settings(state: StateFolder, overrides: dict) -> Settings:
    """The saved settings with the given ones applied; checked: a server others can reach must ask for passwords."""
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        settings = Settings.model_validate((state.load_settings() or Settings()).model_dump() | given)
    except ValidationError as error:
        problem = error.errors()[0]
        raise ServerError(f"--{problem['loc'][0].replace('_', '-')} {problem['input']}: {problem['msg']}") from None
    if not settings.auth and not is_loopback(settings.host):
        raise ServerError(
            f"--host {settings.host} makes the server reachable from other machines, which needs authentication: "
            "drop --no-auth, or keep --host 127.0.0.1"
        )
    return settings


def start(state: StateFolder, overrides: dict) -> tuple[Runtime, bool]:
    """Start what is not running (after a crash, only that); (what runs, whether anything was started)."""
    runtime = state.load_runtime()
    running = is_running(runtime)
    settings = resolve_settings(state, overrides)
    if running and postgres.running_port(state) and healthy(runtime.url):
        saved = state.load_settings()
        if saved != settings:
            raise ServerError(f"the server runs with other settings ({saved}): `mlp server stop` first to change them")
        return runtime, False
    if runtime is not None:  # it crashed, or PostgreSQL died under it, or it stopped answering: restart it whole
        what = "does not answer" if running else "is gone without `mlp server stop`"
        logger.warning("MLflow server (pid %d) %s: restarting it", runtime.mlflow_pid, what)
        stop_mlflow(state)  # also the workers a crashed server left behind
    if not is_loopback(settings.host):
        logger.warning(
            "listening on %s: reachable from other machines, over plain HTTP: every request needs a user name and "
            "password (basic auth); put TLS in front of it (a reverse proxy) before using it across a network",
            settings.host,
        )
    if not is_loopback(settings.postgres_host):
        logger.warning(
            "PostgreSQL listening on %s: other machines reach the search database (role search, password in %s) "
            "over plain TCP, without TLS; the other databases stay on this machine",
            settings.postgres_host,
            state.search_pgpass_file,
        )
    runtime = launch(state, settings)
    state.save_settings(settings)  # once they worked: a refused port is not the next start's default
    return runtime, True


def launch(state: StateFolder, settings: Settings) -> Runtime:
    """Start PostgreSQL, then `mlflow server` in a session of its own (it outlives `mlp`); return once it answers."""
    began = time.monotonic()
    port = postgres.start(state, settings)
    if settings.artifacts_destination is None:
        state.artifacts.mkdir(exist_ok=True)
    logger.info("PostgreSQL on 127.0.0.1:%d; starting the MLflow server", port)
    check_port_free(settings.host, settings.port, "--port")
    environment = {name: value for name, value in os.environ.items() if name not in CLIENT_VARIABLES}
    environment["PGPASSFILE"] = str(state.pgpass_file)
    if settings.auth:
        write_auth_config(state, port)
        environment["MLFLOW_AUTH_CONFIG_PATH"] = str(state.auth_config_file)
        environment["MLFLOW_FLASK_SERVER_SECRET_KEY"] = state.secrets()["flask_secret_key"]
    log_path = state.logs / "mlflow.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command(state, settings, port),
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: `stop` ends the workers with it
            cwd=state.root,
        )
    url = client_url(settings)
    try:
        wait_until_serving(process, url, START_TIMEOUT_SECONDS, "mlflow server")
    except ServerError as error:
        stop_process_group(process.pid)
        raise ServerError(f"{error}: see {log_path}") from None
    if settings.auth:
        create_as_admin(url, state.admin_password())
    started = psutil.Process(process.pid).create_time()
    runtime = Runtime(mlflow_pid=process.pid, mlflow_started=started, postgres_port=port, url=url)
    write_text(state.runtime_file, runtime.model_dump_json(indent=2) + "\n")
    logger.info("MLflow server at %s, started in %.1f s", url, time.monotonic() - began)
    return runtime


def write_auth_config(state: StateFolder, postgres_port: int) -> None:
    text = (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {postgres.uri(postgres_port, postgres.AUTH_DATABASE)}\n"
        f"admin_username = {ADMIN_USERNAME}\n"
        f"admin_password = {state.admin_password()}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n"
    )
    write_text(state.auth_config_file, text, PRIVATE)


def command(state: StateFolder, settings: Settings, postgres_port: int) -> list[str]:
    mlflow = str(Path(sys.executable).parent / "mlflow")
    arguments = [mlflow, "server", "--backend-store-uri", postgres.uri(postgres_port)]
    arguments += ["--artifacts-destination", state.artifacts_destination(settings), "--serve-artifacts"]
    arguments += ["--host", settings.host, "--port", str(settings.port), "--workers", str(settings.workers)]
    if settings.allowed_hosts:
        arguments += ["--allowed-hosts", settings.allowed_hosts]
    if settings.auth:
        arguments += ["--app-name", "basic-auth"]
    return arguments


def pipeline_names() -> tuple[set[str], set[str]]:
    """(experiment names, registered model names): the default config with each dataset, and each experiment file."""
    if not (CONFIG_DIRECTORY / "config.yaml").is_file():
        return set(), set()  # not started from the repository: nothing to reserve
    overrides = [
        f"{group}={path.stem}"
        for group in ("dataset", "experiment")
        for path in (CONFIG_DIRECTORY / group).glob("*.yaml")
    ]
    names = [read_yaml(compose([override]), f"conf/ with {override}")["mlflow"] for override in overrides]
    return {name["experiment_name"] for name in names}, {name["registered_model_name"] for name in names}


def create_as_admin(url: str, password: str) -> None:
    """Create the experiments and registered models conf/ composes to, as the admin, before a user can take one:
    its creator manages it, and the pipeline refuses names a non-admin manages (tracking.check_managed_by_admin)."""
    experiments, models = pipeline_names()
    credentials = MlflowHostCreds(url, username=ADMIN_USERNAME, password=password)
    requests = [("experiments/create", name) for name in sorted(experiments)]
    requests += [("registered-models/create", name) for name in sorted(models)]
    for endpoint, name in requests:
        response = http_request(credentials, f"/api/2.0/mlflow/{endpoint}", "POST", json={"name": name})
        if response.status_code != 200 and "RESOURCE_ALREADY_EXISTS" not in response.text:
            raise ServerError(f"creating '{name}' as the admin failed: HTTP {response.status_code} {response.text}")
    logger.info("experiments %s and registered models %s belong to the admin", sorted(experiments), sorted(models))


def healthy(url: str) -> bool:
    # /health needs no credentials, also under basic auth.
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:  # urllib's errors too
        return False


def wait_until_serving(process: subprocess.Popen, url: str, seconds: float, name: str) -> None:
    """Return once the MLflow server `process` answers at `url`; ServerError if it exits or `seconds` pass first."""
    deadline = time.monotonic() + seconds
    while not healthy(url):
        if process.poll() is not None:
            raise ServerError(f"`{name}` exited with status {process.returncode} before answering on {url}")
        if time.monotonic() > deadline:
            raise ServerError(f"`{name}` did not answer on {url} within {seconds} s")
        time.sleep(0.5)


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

    The group outlives the `mlflow server` process `launch` started while any worker does, and Linux
    hands out no pid equal to a live group's id: the signal reaches only what `launch` started.
    """
    members = [process for process in psutil.process_iter() if group_of(process) == group]
    for sent in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sent)
        except ProcessLookupError:
            return
        _, alive = psutil.wait_procs(members, timeout=STOP_TIMEOUT_SECONDS)
        if not alive:
            return


def group_of(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None


def stop_mlflow(state: StateFolder) -> int | None:
    """Stop the MLflow server `start` launched, and whatever of it is left after a crash; its pid if it ran."""
    runtime = state.load_runtime()
    state.runtime_file.unlink(missing_ok=True)
    if runtime is None:
        return None
    running = is_running(runtime)
    stop_process_group(runtime.mlflow_pid)
    return runtime.mlflow_pid if running else None


def stop(state: StateFolder) -> list[str]:
    """Stop the MLflow server, then PostgreSQL; what was stopped."""
    pids = {"MLflow server": stop_mlflow(state), "PostgreSQL": postgres.stop(state)}
    return [f"{name} (pid {pid})" for name, pid in pids.items() if pid]


def status(state: StateFolder) -> tuple[list[str], bool]:
    """One line per component: what runs, where; and whether the whole stack runs and answers."""
    settings = state.load_settings()
    if settings is None and not postgres.initialized(state):
        return [f"no server here: {state.root} has none (`mlp server start` creates it)"], False
    settings = settings or Settings()
    runtime = state.load_runtime()
    running = is_running(runtime)
    answers = running and healthy(runtime.url)
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
    if database and not is_loopback(settings.postgres_host):
        database_line += f" and {settings.postgres_host}:{database[1]} (search database only)"
    search_line = f"postgresql+psycopg://search@<host>:{settings.postgres_port}/search, {state.search_pgpass_file}"
    auth_line = f"basic auth, user {ADMIN_USERNAME}, password in {state.admin_password_file}"
    lines = [
        f"mlflow      {mlflow_line}",
        f"postgresql  {database_line}, data {state.postgres_data}",
        f"search      {search_line}",
        f"artifacts   {state.artifacts_destination(settings)}",
        f"auth        {auth_line if settings.auth else 'none (loopback only)'}",
        f"logs        {state.logs}",
    ]
    return lines, bool(answers and database)
