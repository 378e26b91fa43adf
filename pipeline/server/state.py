"""The state folder: where each file of the server lives, its settings, and its generated secrets."""

import ipaddress
import json
import os
import secrets
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.errors import PipelineError

STATE_DIRECTORY = Path(".server")
ADMIN_USERNAME = "admin"
# PostgreSQL: the superuser only `mlp server` itself uses (create, back up, restore); the role the
# MLflow server connects as, owner of the tracking and users databases, whose password no user gets;
# and the role search users get (search.pgpass), owner of Optuna's database and allowed into no other:
# `mlp search --storage postgresql+psycopg://search@<host>:<port>/search`.
SUPERUSER = "postgres"
DATABASE_ROLE = "mlflow"
TRACKING_DATABASE = "mlflow"
AUTH_DATABASE = "mlflow_auth"
SEARCH_ROLE = SEARCH_DATABASE = "search"
OWNERS = {TRACKING_DATABASE: DATABASE_ROLE, AUTH_DATABASE: DATABASE_ROLE, SEARCH_DATABASE: SEARCH_ROLE}
AUTH_CACHE_SECONDS = 60


class ServerError(PipelineError):
    """The server cannot do what was asked: a setting, a port, a missing or broken state folder."""


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 4
    artifacts_destination: str | None = None  # None: the state folder's artifacts/
    allowed_hosts: str | None = None  # Host headers MLflow accepts besides localhost and private addresses
    auth: bool = True
    postgres_host: str = "127.0.0.1"  # another: other machines reach the search database, with its password
    postgres_port: int | None = None  # chosen at the first start, then kept: search URLs stay valid


@dataclass
class Runtime:
    """What `start` left running, so that `status` and `stop` find it and a crash is told from a stop."""

    mlflow_pid: int
    mlflow_started: float  # the process's creation time: a reused pid has another
    postgres_port: int
    url: str


class StateFolder:
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.postgres_data = self.root / "postgres"
        self.artifacts = self.root / "artifacts"
        self.logs = self.root / "logs"
        self.backups = self.root / "backups"
        self.settings_file = self.root / "settings.json"
        self.runtime_file = self.root / "runtime.json"
        self.admin_password_file = self.root / "admin_password"
        self.secrets_file = self.root / "secrets.json"
        self.pgpass_file = self.root / "pgpass"
        self.search_pgpass_file = self.root / "search.pgpass"
        self.auth_config_file = self.root / "basic_auth.ini"
        self.lock_file = self.root / "lock"

    def create(self) -> None:
        # 0700: the folder holds the database files and the password files.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self.logs.mkdir(exist_ok=True)

    def load_settings(self) -> Settings | None:
        try:
            return Settings(**json.loads(self.settings_file.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, TypeError) as error:
            raise ServerError(f"{self.settings_file} is not valid ({error}): delete it and start again") from None

    def save_settings(self, settings: Settings) -> None:
        self.settings_file.write_text(json.dumps(asdict(settings), indent=2) + "\n", encoding="utf-8")

    def artifacts_destination(self, settings: Settings) -> str:
        return settings.artifacts_destination or str(self.artifacts)

    def load_runtime(self) -> Runtime | None:
        try:
            return Runtime(**json.loads(self.runtime_file.read_text(encoding="utf-8")))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None

    def save_runtime(self, runtime: Runtime) -> None:
        self.runtime_file.write_text(json.dumps(asdict(runtime), indent=2) + "\n", encoding="utf-8")

    def clear_runtime(self) -> None:
        self.runtime_file.unlink(missing_ok=True)

    def secrets(self) -> dict[str, str]:
        """The PostgreSQL passwords and Flask's secret key, each generated on first use."""
        values = json.loads(self.secrets_file.read_text(encoding="utf-8")) if self.secrets_file.is_file() else {}
        missing = {"superuser", "database_role", "search_role", "flask_secret_key"} - values.keys()
        if missing:
            values |= {name: secrets.token_urlsafe(32) for name in missing}
            write_private(self.secrets_file, json.dumps(values, indent=2) + "\n")
        return values

    def admin_password(self) -> str:
        if not self.admin_password_file.is_file():
            write_private(self.admin_password_file, secrets.token_urlsafe(24) + "\n")
        return self.admin_password_file.read_text(encoding="utf-8").strip()

    def write_pgpass(self) -> None:
        # libpq's format, host:port:database:user:password. The server's own roles, on this machine only;
        # the search role's, the only one a user gets, from any host (users copy the file to theirs).
        values = self.secrets()
        roles = {SUPERUSER: values["superuser"], DATABASE_ROLE: values["database_role"]}
        write_private(self.pgpass_file, "".join(f"127.0.0.1:*:*:{role}:{secret}\n" for role, secret in roles.items()))
        write_private(self.search_pgpass_file, f"*:*:*:{SEARCH_ROLE}:{values['search_role']}\n")

    def write_auth_config(self, postgres_port: int) -> None:
        # The users database lives in the same PostgreSQL.
        text = (
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = {database_uri(postgres_port, AUTH_DATABASE)}\n"
            f"admin_username = {ADMIN_USERNAME}\n"
            f"admin_password = {self.admin_password()}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # Checking a password (scrypt) costs about 0.25 s of CPU, twice per request without this
            # cache: 2 cores then serve a few requests a second. Cached, a changed or deleted password
            # keeps working on the other workers for up to this many seconds.
            f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n"
        )
        write_private(self.auth_config_file, text)


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_port_free(host: str, port: int, option: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        # As the servers bind: connections of a previous server in TIME_WAIT do not make the port busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ServerError(
                f"cannot listen on {host}:{port} ({error.strerror}): "
                f"choose another port with `mlp server start {option} N`"
            ) from None


def database_uri(port: int, database: str = TRACKING_DATABASE) -> str:
    """The URI the MLflow server connects with: no password, libpq reads it from pgpass."""
    return f"postgresql://{DATABASE_ROLE}@127.0.0.1:{port}/{database}"


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read (mode 0600 from the moment it exists)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
