"""The state folder: where each file of the server lives, its settings, and its generated secrets."""

import ipaddress
import json
import secrets
import socket
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import PipelineError
from pipeline.files import PRIVATE, write_text

STATE_DIRECTORY = Path(".server")
ADMIN_USERNAME = "admin"
Port = Annotated[int, Field(ge=1, le=65535)]


class ServerError(PipelineError):
    """The server cannot do what was asked: a setting, a port, a missing or broken state folder."""


class Settings(BaseModel):
    """What `start` was given, saved for the next start."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: Port = 5000
    workers: int = Field(4, ge=1)
    artifacts_destination: str | None = None  # None: the state folder's artifacts/
    allowed_hosts: str | None = None  # Host headers MLflow accepts besides localhost and private addresses
    auth: bool = True
    postgres_host: str = "127.0.0.1"  # another: other machines reach the search database, with its password
    postgres_port: Port | None = None  # chosen at the first start, then kept: search URLs stay valid


class Runtime(BaseModel):
    """What `start` left running, so that `status` and `stop` find it and a crash is told from a stop."""

    mlflow_pid: int
    mlflow_started: float  # the process's creation time: a reused pid has another
    postgres_port: int
    url: str


class StateFolder:
    """`.server/` by default, mode 0700: settings, passwords (mode 0600), PostgreSQL's data, artifacts, logs."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.postgres_data = self.root / "postgres"
        self.artifacts = self.root / "artifacts"
        self.logs = self.root / "logs"
        self.backups = self.root / "backups"
        self.settings_file = self.root / "settings.json"
        self.runtime_file = self.root / "runtime.json"
        self.admin_password_file = self.root / "admin_password"
        self.secrets_file = self.root / "secrets.json"  # PostgreSQL's passwords and Flask's secret key
        self.pgpass_file = self.root / "pgpass"  # libpq's password file for the server's own roles
        self.search_pgpass_file = self.root / "search.pgpass"  # the search role's, the only one users get
        self.auth_config_file = self.root / "basic_auth.ini"
        self.lock_file = self.root / "lock"

    def create(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self.logs.mkdir(exist_ok=True)

    def load_settings(self) -> Settings | None:
        try:
            return Settings.model_validate_json(self.settings_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValidationError as error:
            reason = error.errors()[0]["msg"]
            raise ServerError(f"{self.settings_file} is not valid ({reason}): delete it and start again") from None

    def save_settings(self, settings: Settings) -> None:
        write_text(self.settings_file, settings.model_dump_json(indent=2) + "\n")

    def artifacts_destination(self, settings: Settings) -> str:
        return settings.artifacts_destination or str(self.artifacts)

    def load_runtime(self) -> Runtime | None:
        try:
            return Runtime.model_validate_json(self.runtime_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValidationError):
            return None

    def secrets(self) -> dict[str, str]:
        """The PostgreSQL passwords and Flask's secret key, each generated on first use."""
        values = json.loads(self.secrets_file.read_text(encoding="utf-8")) if self.secrets_file.is_file() else {}
        missing = {"superuser", "database_role", "search_role", "flask_secret_key"} - values.keys()
        if missing:
            values |= {name: secrets.token_urlsafe(32) for name in missing}
            write_text(self.secrets_file, json.dumps(values, indent=2) + "\n", PRIVATE)
        return values

    def admin_password(self) -> str:
        if not self.admin_password_file.is_file():
            write_text(self.admin_password_file, secrets.token_urlsafe(24) + "\n", PRIVATE)
        return self.admin_password_file.read_text(encoding="utf-8").strip()


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


def free_port() -> int:
    """A port no one listens on now, on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
