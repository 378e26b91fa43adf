"""`mlp server` without a server: settings refused before anything starts, the state folder's file
modes, and the one-line errors a user can cause. The real stack runs in test_server_end_to_end.py."""

from __future__ import annotations

import stat
import subprocess

import pytest
from conftest import REPOSITORY, run

from pipeline.files import PRIVATE, write_text
from pipeline.server import postgres, stack
from pipeline.server.state import ServerError, Settings, StateFolder, free_port


def mlp_server(*arguments: str, state_dir) -> tuple[int, str, str]:
    result = run(["mlp", "server", *arguments, "--state-dir", str(state_dir)], cwd=REPOSITORY, check=False)
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
     ("192.168.1.10", False), ("mlflow.example.org", False)],
)  # fmt: skip
def test_loopback_addresses_are_told_from_the_others(host, loopback):
    assert stack.is_loopback(host) is loopback


def test_a_server_without_passwords_may_listen_on_loopback_only(tmp_path):
    state = StateFolder(tmp_path)
    assert stack.resolve_settings(state, {"auth": False}).host == "127.0.0.1"
    with pytest.raises(ServerError, match="--host 0.0.0.0 .* needs authentication: drop --no-auth"):
        stack.resolve_settings(state, {"host": "0.0.0.0", "auth": False})


def test_saved_settings_are_the_defaults_of_the_next_start(tmp_path):
    state = StateFolder(tmp_path)
    state.create()
    state.save_settings(Settings(port=5123, artifacts_destination="s3://bucket/mlflow"))
    settings = stack.resolve_settings(state, {"host": None, "workers": 3})
    assert (settings.port, settings.workers, settings.artifacts_destination) == (5123, 3, "s3://bucket/mlflow")
    assert stack.client_url(Settings(host="0.0.0.0", port=5123)) == "http://127.0.0.1:5123"


def test_secrets_are_generated_once_and_readable_by_their_owner_only(tmp_path):
    state = StateFolder(tmp_path / "state")
    state.create()
    password = state.admin_password()
    assert len(password) >= 24 and state.admin_password() == password
    assert state.secrets() == state.secrets()
    postgres.write_passfiles(state)
    stack.write_auth_config(state, postgres_port=5432)
    files = (state.admin_password_file, state.secrets_file, state.pgpass_file, state.search_pgpass_file)
    for path in (*files, state.auth_config_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(state.root.stat().st_mode) == 0o700
    # The database URI in MLflow's auth config names no password: libpq reads it from pgpass.
    assert state.secrets()["database_role"] not in state.auth_config_file.read_text()
    # An existing file loosened by hand is tightened when written again.
    state.pgpass_file.chmod(0o644)
    write_text(state.pgpass_file, "x", PRIVATE)
    assert stat.S_IMODE(state.pgpass_file.stat().st_mode) == 0o600


@pytest.mark.slow  # tens of seconds: runs in make test-slow
def test_user_errors_are_one_line_without_a_traceback(tmp_path):
    code, out, err = mlp_server("status", state_dir=tmp_path / "none")
    assert code == 3 and "no server here" in out
    code, _, err = mlp_server("start", "--host", "0.0.0.0", "--no-auth", state_dir=tmp_path / "state")
    assert code == 1 and "needs authentication" in err and "Traceback" not in err
    assert not (tmp_path / "state/postgres").exists()
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    code, _, err = mlp_server("restore", str(tmp_path / "junk.tar.gz"), state_dir=tmp_path / "state")
    assert code == 1 and "is not an archive of `mlp server backup`" in err and "Traceback" not in err
    code, _, err = mlp_server("backup", state_dir=tmp_path / "state")
    assert code == 1 and "nothing to back up" in err and "Traceback" not in err


def test_postgresql_serves_other_machines_the_search_database_only_with_passwords(tmp_path, caplog):
    state = StateFolder(tmp_path)
    state.create()
    (state.postgres_data).mkdir()
    postgres.write_access_rules(state, Settings(postgres_host="0.0.0.0"))
    rules = [line.split() for line in (state.postgres_data / "pg_hba.conf").read_text().splitlines()]
    rules = [rule for rule in rules if rule and not rule[0].startswith("#")]
    assert {rule[-1] for rule in rules} == {"scram-sha-256"}
    remote = [rule for rule in rules if rule[3] not in ("127.0.0.1/32", "::1/128")]
    assert remote and {(rule[1], rule[2]) for rule in remote} == {("search", "search")}
    postgres.write_access_rules(state, Settings())
    assert "0.0.0.0/0" not in (state.postgres_data / "pg_hba.conf").read_text()
    with pytest.raises(ServerError, match="--postgres-port 70000"):
        stack.resolve_settings(state, {"postgres_port": 70000})


def test_waiting_for_a_server_that_exits_says_so_in_one_line():
    process = subprocess.Popen(["false"])
    with pytest.raises(ServerError, match=r"^`mlflow ui` exited with status 1 before answering on http://127"):
        stack.wait_until_serving(process, f"http://127.0.0.1:{free_port()}", 30, "mlflow ui")
