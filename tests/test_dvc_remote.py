"""DVC remotes for real (make test-slow): the default folder remote in .dvc/config, and a WebDAV
remote served by WsgiDAV on 127.0.0.1 with a password. For each: `dvc push`, a fresh `git clone`,
`dvc pull`, after which `dvc status` is clean and `dvc repro` runs nothing."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

import pytest
from cheroot import wsgi
from conftest import TINY_DATASET, make_tiny_project, run
from wsgidav.wsgidav_app import WsgiDAVApp

pytestmark = pytest.mark.slow

STAGES = ("validate", "download", "preprocess", "train", "evaluate")
DATA = (f"data/raw/{TINY_DATASET}", f"data/processed/{TINY_DATASET}", "data/model")
GIT = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_dataset_server):
    # Inside a folder of its own: the default remote is a folder beside the repository.
    path = make_tiny_project(tmp_path_factory.mktemp("remote") / "project", tiny_dataset_server)
    run(["dvc", "repro"], cwd=path)
    run(["git", "add", "-A"], cwd=path)  # dvc.lock and the reports, new since the copy
    run([*GIT, "commit", "-qm", "dvc repro"], cwd=path)
    return path


@pytest.fixture
def webdav_server(tmp_path):
    """WsgiDAV on 127.0.0.1, a free port, basic auth with a generated password; (url, user, password, folder)."""
    folder = tmp_path / "webdav"
    folder.mkdir()
    # A leading dash, as a generated token has one time in 64: the value must still not read as an option.
    password = "-" + secrets.token_urlsafe(16)
    config = {
        "provider_mapping": {"/dvc": str(folder)},
        "simple_dc": {"user_mapping": {"*": {"tester": {"password": password}}}},
        "http_authenticator": {"accept_basic": True, "accept_digest": False, "default_to_digest": False},
        "logging": {"enable": False},
        "verbose": 0,
    }
    server = wsgi.Server(("127.0.0.1", 0), WsgiDAVApp(config))
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    yield f"webdav://127.0.0.1:{server.bind_addr[1]}/dvc", "tester", password, folder
    server.stop()
    thread.join(timeout=10)


def files_under(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file())


def clone_and_pull(project: Path, clone: Path, *settings: list[str]) -> None:
    """A teammate's side: git clone, `dvc remote` settings of their own (config.local), dvc pull;
    then the data is the project's and nothing is left to run."""
    run(["git", "clone", "-q", str(project), str(clone)], cwd=project.parent)
    for setting in settings:
        run(["dvc", "remote", *setting], cwd=clone)
    assert not (clone / "data/model/model.keras").exists()
    run(["dvc", "pull"], cwd=clone)
    for folder in DATA:
        assert files_under(clone / folder) == files_under(project / folder), folder
    assert (clone / "data/model/model.keras").read_bytes() == (project / "data/model/model.keras").read_bytes()
    status = run(["dvc", "status"], cwd=clone).stdout
    assert "Data and pipelines are up to date." in status, status
    repro = run(["dvc", "repro"], cwd=clone).stdout
    assert "Running stage" not in repro, repro
    for stage in STAGES:
        assert f"'{stage}' didn't change, skipping" in repro


def test_the_default_remote_is_a_folder_beside_the_repository(project):
    assert run(["dvc", "remote", "default"], cwd=project).stdout.strip() == "local"
    run(["dvc", "push"], cwd=project)
    assert files_under(project.parent / "keras-mlp-dvc-storage") > 0
    clone_and_pull(project, project.parent / "clone")


def test_a_webdav_remote_with_a_password_pushes_and_pulls(project, webdav_server, tmp_path):
    url, user, password, folder = webdav_server
    # `--` ends the options: a secret may begin with a dash (docs/team.md writes it so too).
    credentials = [
        ["modify", "--local", "team", "user", "--", user],
        ["modify", "--local", "team", "password", "--", password],
    ]
    run(["dvc", "remote", "add", "team", url], cwd=project)
    for setting in credentials:
        run(["dvc", "remote", *setting], cwd=project)
    # The password went to .dvc/config.local, which git ignores: only the URL is committed.
    run([*GIT, "commit", "-qam", "the team's WebDAV remote"], cwd=project)
    assert password not in run(["git", "show", "HEAD"], cwd=project).stdout
    run(["dvc", "push", "--remote", "team"], cwd=project)
    assert files_under(folder) == files_under(project.parent / "keras-mlp-dvc-storage")
    without_password = tmp_path / "without-password"
    run(["git", "clone", "-q", str(project), str(without_password)], cwd=tmp_path)
    refused = run(["dvc", "pull", "--remote", "team"], cwd=without_password, check=False)
    assert refused.returncode != 0 and not (without_password / "data/model/model.keras").exists()
    clone_and_pull(project, tmp_path / "clone", ["default", "--local", "team"], *credentials)
