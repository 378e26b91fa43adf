"""`mlp server backup` and `restore`: both databases and the artifacts folder in one timestamped archive.

The archive holds tracking.dump and auth.dump (pg_dump's custom format), artifacts/ (when artifacts
are a local folder; an s3:// destination is backed up by its own means) and manifest.json with the
row counts at backup time, which restore checks against what it restored. The users database holds
password hashes, so the archive is written mode 0600.
"""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from werkzeug.security import generate_password_hash

from pipeline.server import mlflow_server, postgres, stack
from pipeline.server.state import ADMIN_USERNAME, AUTH_DATABASE, TRACKING_DATABASE, ServerError, StateFolder

logger = logging.getLogger(__name__)

# Rows of MLflow's own tables: what a restore must bring back, counted the same way before and after.
COUNTED_TABLES = (
    "experiments", "runs", "metrics", "params", "tags", "datasets", "logged_models",
    "registered_models", "model_versions",
)  # fmt: skip
DUMPS = {TRACKING_DATABASE: "tracking.dump", AUTH_DATABASE: "auth.dump"}


@dataclass
class Summary:
    archive: str
    counts: dict[str, int]  # table -> rows, and "artifact files"
    verb: str = "backed up"

    def describe(self) -> str:
        counted = ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in self.counts.items())
        return f"{self.verb} {self.archive}: {counted}"


def row_counts(cursor) -> dict[str, int]:
    cursor.execute(" UNION ALL ".join(f"SELECT '{table}', count(*) FROM {table}" for table in COUNTED_TABLES))
    return {name: count for name, count in cursor.fetchall()}


def count_files(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0


def local_artifacts(state: StateFolder) -> Path | None:
    settings = state.load_settings()
    destination = state.artifacts_destination(settings) if settings else str(state.artifacts)
    return None if "://" in destination else Path(destination)


def backup(state: StateFolder, output: Path | None) -> Summary:
    if not postgres.initialized(state):
        raise ServerError(f"nothing to back up: {state.postgres_data} does not exist (`mlp server start` creates it)")
    state.write_pgpass()
    was_running = postgres.running_port(state) is not None
    port = postgres.start(state)
    try:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        output = output or state.backups / f"mlflow-backup-{stamp}.tar.gz"
        artifacts = local_artifacts(state)
        with tempfile.TemporaryDirectory(dir=state.root, prefix=".backup.") as folder:
            work = Path(folder)
            # The databases first, then the artifacts: a run logged in between has its files in the
            # archive without its rows, never rows pointing at missing files.
            with postgres.snapshot(state, port, TRACKING_DATABASE) as (cursor, snapshot_id):
                # Counted and dumped in one snapshot: what restore must find is exactly what was dumped.
                found = row_counts(cursor)
                postgres.dump(state, port, TRACKING_DATABASE, work / DUMPS[TRACKING_DATABASE], snapshot_id)
            postgres.dump(state, port, AUTH_DATABASE, work / DUMPS[AUTH_DATABASE])
            if artifacts is not None:
                (work / "artifacts").mkdir()
                if artifacts.is_dir():
                    shutil.copytree(artifacts, work / "artifacts", dirs_exist_ok=True)
                found["artifact_files"] = count_files(work / "artifacts")
            (work / "manifest.json").write_text(json.dumps({"created": stamp, "counts": found}, indent=2) + "\n")
            write_archive(work, output)
    finally:
        if not was_running:
            postgres.stop(state)
    if artifacts is None:
        destination = state.artifacts_destination(state.load_settings())
        logger.warning("artifacts are not in the archive: back up %s by its own means", destination)
    return Summary(str(output), found)


def write_archive(folder: Path, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    partial.touch(mode=0o600)
    partial.chmod(0o600)
    with tarfile.open(partial, "w:gz") as archive:
        for path in sorted(folder.iterdir()):
            archive.add(path, arcname=path.name)
    partial.replace(output)


def read_archive(archive: Path, destination: Path) -> dict:
    """Unpack a backup archive into `destination`; its manifest."""
    if not archive.is_file():
        raise ServerError(f"{archive}: no such file; give an archive written by `mlp server backup`")
    try:
        with tarfile.open(archive, "r:gz") as opened:
            # The "data" filter refuses absolute paths, links out of the folder and device files.
            opened.extractall(destination, filter="data")
        manifest = json.loads((destination / "manifest.json").read_text())
        missing = [name for name in DUMPS.values() if not (destination / name).is_file()]
    except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError) as error:
        raise ServerError(f"{archive} is not an archive of `mlp server backup` ({error})") from None
    if missing or "counts" not in manifest:
        raise ServerError(f"{archive} is not an archive of `mlp server backup`: {missing or 'counts'} missing")
    return manifest


def restore(state: StateFolder, archive: Path) -> Summary:
    """Replace the databases and the local artifacts with the archive's; the MLflow server runs after if it ran."""
    archive = archive.resolve()
    with tempfile.TemporaryDirectory(dir=state.root, prefix=".restore.") as folder:
        work = Path(folder)
        manifest = read_archive(archive, work)
        runtime = state.load_runtime()
        was_serving = mlflow_server.is_running(runtime)
        if runtime is not None:
            mlflow_server.stop_process_group(runtime.mlflow_pid)
            state.clear_runtime()
        was_running = postgres.running_port(state) is not None
        port = prepare_database_server(state)
        try:
            restored = restore_contents(state, port, work)
        finally:
            if not was_running and not was_serving:
                postgres.stop(state)
    if was_serving:
        stack.launch(state, state.load_settings())
    expected = {name: count for name, count in manifest["counts"].items() if name in restored}
    if "artifact_files" in manifest["counts"] and "artifact_files" not in restored:
        logger.warning("the archive's artifacts were not restored: this server keeps its artifacts elsewhere")
    if restored != expected:
        raise ServerError(f"restored {restored}, but the archive recorded {expected}")
    return Summary(str(archive), restored, verb="restored")


def prepare_database_server(state: StateFolder) -> int:
    state.admin_password()
    state.write_pgpass()
    if not postgres.initialized(state):
        postgres.initialize(state)
    port = postgres.start(state)
    postgres.create_databases(state, port)
    return port


def restore_contents(state: StateFolder, port: int, work: Path) -> dict[str, int]:
    for database, name in DUMPS.items():
        postgres.recreate_database(state, port, database)
        postgres.restore(state, port, database, work / name)
    # The archive's admin has the password of the state folder it came from; this folder's file
    # must keep working. (MLflow's users table: username, password_hash, hashed as MLflow does.)
    password_hash = generate_password_hash(state.admin_password())
    sql = f"UPDATE users SET password_hash = '{password_hash}' WHERE username = '{ADMIN_USERNAME}'"
    postgres.psql(state, port, sql, database=AUTH_DATABASE, user="mlflow")
    with postgres.connect(state, port, TRACKING_DATABASE) as connection, connection.cursor() as cursor:
        restored = row_counts(cursor)
    artifacts = local_artifacts(state)
    if artifacts is not None:
        replace_folder(work / "artifacts", artifacts)
        restored["artifact_files"] = count_files(artifacts)
    return restored


def replace_folder(source: Path, target: Path) -> None:
    """Put `source` (or an empty folder) where `target` is, keeping the old one until the new one is in place."""
    source.mkdir(exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(f".{target.name}.restoring")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.move(str(source), staged)
    if target.exists():
        retired = target.with_name(f".{target.name}.replaced")
        shutil.rmtree(retired, ignore_errors=True)
        target.rename(retired)
        staged.rename(target)
        shutil.rmtree(retired)
    else:
        staged.rename(target)
