"""`mlp server backup` and `restore`: the three databases and the artifacts folder in one timestamped archive.

The archive holds tracking.dump, auth.dump and search.dump (pg_dump's custom format), artifacts/ (when
artifacts are a local folder), the settings, and manifest.json with the row counts at backup time, which
restore checks against what it restored. The users database holds password hashes: the archive is mode 0600.
"""

import json
import logging
import shutil
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

import psycopg
from werkzeug.security import generate_password_hash

from pipeline.files import PRIVATE, atomic_path
from pipeline.server import postgres, stack
from pipeline.server.postgres import AUTH_DATABASE, SEARCH_DATABASE, SUPERUSER, TRACKING_DATABASE
from pipeline.server.state import ADMIN_USERNAME, ServerError, Settings, StateFolder

logger = logging.getLogger(__name__)

# Rows of MLflow's own tables: what a restore must bring back, counted the same way before and after.
COUNTED_TABLES = (
    "experiments", "runs", "metrics", "params", "tags", "datasets", "logged_models",
    "registered_models", "model_versions",
)  # fmt: skip
DUMPS = {TRACKING_DATABASE: "tracking.dump", AUTH_DATABASE: "auth.dump", SEARCH_DATABASE: "search.dump"}
# Archives written before the search database was backed up lack its dump: restore leaves that database as it is.
REQUIRED_DUMPS = (DUMPS[TRACKING_DATABASE], DUMPS[AUTH_DATABASE])


def describe(verb: str, archive: Path, counts: dict[str, int]) -> str:
    counted = ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in counts.items())
    return f"{verb} {archive}: {counted}"


def row_counts(connection: psycopg.Connection) -> dict[str, int]:
    query = " UNION ALL ".join(f"SELECT '{table}', count(*) FROM {table}" for table in COUNTED_TABLES)
    return dict(connection.execute(query).fetchall())


def search_counts(connection: psycopg.Connection) -> dict[str, int]:
    """Optuna's studies and trials in the search database (none before a search has created its tables)."""
    if connection.execute("SELECT to_regclass('trials')").fetchone()[0] is None:
        return {}
    query = "SELECT 'search_studies', count(*) FROM studies UNION ALL SELECT 'search_trials', count(*) FROM trials"
    return dict(connection.execute(query).fetchall())


def export_snapshot(connection: psycopg.Connection) -> str:
    """Open a read-only transaction on `connection` whose snapshot pg_dump then dumps; the snapshot's id."""
    connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    connection.read_only = True
    return connection.execute("SELECT pg_export_snapshot()").fetchone()[0]


def count_files(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file())


def local_artifacts(state: StateFolder, settings: Settings) -> Path | None:
    """The artifacts folder, None when artifacts go elsewhere (s3://...: backed up by its own means)."""
    destination = state.artifacts_destination(settings)
    return None if "://" in destination else Path(destination)


def backup(state: StateFolder, output: Path | None) -> str:
    """Write the archive; what it holds."""
    if not postgres.initialized(state):
        raise ServerError(f"nothing to back up: {state.postgres_data} does not exist (`mlp server start` creates it)")
    was_running = postgres.running_port(state) is not None
    settings = state.load_settings() or Settings()
    port = postgres.start(state, settings)
    state.save_settings(settings)
    artifacts = local_artifacts(state, settings)
    try:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        output = output or state.backups / f"mlflow-backup-{stamp}.tar.gz"
        with tempfile.TemporaryDirectory(dir=state.root, prefix=".backup.") as folder:
            work = Path(folder)
            # The databases first, then the artifacts: a run logged in between has its files in the
            # archive without its rows, never rows pointing at missing files.
            # Each database counted and dumped in one snapshot: what restore must find is exactly what was dumped.
            with postgres.connect(state, port, TRACKING_DATABASE) as connection:
                snapshot_id = export_snapshot(connection)
                found = row_counts(connection)
                postgres.dump(state, port, TRACKING_DATABASE, work / DUMPS[TRACKING_DATABASE], snapshot_id)
            postgres.dump(state, port, AUTH_DATABASE, work / DUMPS[AUTH_DATABASE])
            # The studies in a snapshot of their own: they refer to runs by id only.
            with postgres.connect(state, port, SEARCH_DATABASE, user=SUPERUSER) as connection:
                snapshot_id = export_snapshot(connection)
                found |= search_counts(connection)
                postgres.dump(state, port, SEARCH_DATABASE, work / DUMPS[SEARCH_DATABASE], snapshot_id)
            if artifacts is not None:
                (work / "artifacts").mkdir()
                if artifacts.is_dir():
                    shutil.copytree(artifacts, work / "artifacts", dirs_exist_ok=True)
                found["artifact_files"] = count_files(work / "artifacts")
            StateFolder(work).save_settings(settings)  # the ports travel: search URLs stay valid after a restore
            (work / "manifest.json").write_text(json.dumps({"created": stamp, "counts": found}, indent=2) + "\n")
            with atomic_path(output, PRIVATE) as partial, tarfile.open(partial, "w:gz") as archive:
                for path in sorted(work.iterdir()):
                    archive.add(path, arcname=path.name)
    finally:
        if not was_running:
            postgres.stop(state)
    if artifacts is None:
        logger.warning("artifacts are not in the archive: back up %s by its own means", settings.artifacts_destination)
    return describe("backed up", output, found)


def read_archive(archive: Path, destination: Path) -> dict:
    """Unpack a backup archive into `destination`; its manifest."""
    if not archive.is_file():
        raise ServerError(f"{archive}: no such file; give an archive written by `mlp server backup`")
    try:
        with tarfile.open(archive, "r:gz") as opened:
            # Plain files and folders inside `destination` only: what the "data" filter refuses (absolute paths,
            # links, device files) is refused here too, for the Pythons before 3.11.4 that lack the filter.
            for member in opened.getmembers():
                name = PurePosixPath(member.name)
                if not (member.isfile() or member.isdir()) or name.is_absolute() or ".." in name.parts:
                    raise ServerError(f"{archive}: refusing {member.name!r}, not a plain file or folder inside it")
            opened.extractall(destination, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        manifest = json.loads((destination / "manifest.json").read_text())
        missing = [name for name in REQUIRED_DUMPS if not (destination / name).is_file()]
    except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError) as error:
        raise ServerError(f"{archive} is not an archive of `mlp server backup` ({error})") from None
    if missing or "counts" not in manifest:
        raise ServerError(f"{archive} is not an archive of `mlp server backup`: {missing or 'counts'} missing")
    return manifest


def restore(state: StateFolder, archive: Path) -> str:
    """Replace the databases and the local artifacts with the archive's; the MLflow server runs after if it ran."""
    archive = archive.resolve()
    with tempfile.TemporaryDirectory(dir=state.root, prefix=".restore.") as folder:
        work = Path(folder)
        manifest = read_archive(archive, work)
        was_serving = stack.stop_mlflow(state) is not None
        was_running = postgres.running_port(state) is not None
        # A new state folder takes the archive's settings: the same ports as before.
        settings = state.load_settings() or StateFolder(work).load_settings() or Settings()
        port = postgres.start(state, settings)
        state.save_settings(settings)
        try:
            restored = restore_contents(state, settings, port, work)
        finally:
            if not was_running and not was_serving:
                postgres.stop(state)
    if was_serving:
        stack.launch(state, settings)
    expected = {name: count for name, count in manifest["counts"].items() if name in restored}
    if "artifact_files" in manifest["counts"] and "artifact_files" not in restored:
        logger.warning("the archive's artifacts were not restored: this server keeps its artifacts elsewhere")
    if restored != expected:
        raise ServerError(f"restored {restored}, but the archive recorded {expected}")
    return describe("restored", archive, restored)


def restore_contents(state: StateFolder, settings: Settings, port: int, work: Path) -> dict[str, int]:
    for database, name in DUMPS.items():
        if (work / name).is_file():
            postgres.recreate_database(state, port, database)
            postgres.restore(state, port, database, work / name)
    # The archive's admin has the password of the state folder it came from; this folder's file
    # must keep working. (MLflow's users table: username, password_hash, hashed as MLflow does.)
    password_hash = generate_password_hash(state.admin_password())
    with postgres.connect(state, port, AUTH_DATABASE) as connection:
        update = "UPDATE users SET password_hash = %s WHERE username = %s"
        connection.execute(update, (password_hash, ADMIN_USERNAME))
    with postgres.connect(state, port, TRACKING_DATABASE) as connection:
        restored = row_counts(connection)
    if (work / DUMPS[SEARCH_DATABASE]).is_file():
        with postgres.connect(state, port, SEARCH_DATABASE, user=SUPERUSER) as connection:
            restored |= search_counts(connection)
    artifacts = local_artifacts(state, settings)
    if artifacts is not None:
        # The databases are replaced already: a restore that fails from here on is run again.
        (work / "artifacts").mkdir(exist_ok=True)
        shutil.rmtree(artifacts, ignore_errors=True)
        artifacts.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(work / "artifacts", artifacts)
        restored["artifact_files"] = count_files(artifacts)
    return restored
