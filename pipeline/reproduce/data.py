"""Where `mlp reproduce` takes a run's data from: DVC, when it can, rather than the data stages.

The worktree holds the run's commit, its recorded params.yaml, this repository's DVC cache and remotes.
When the commit's dvc.lock describes what the data stages would make of that config and code
(`dvc status` finds nothing changed but the missing outputs), `dvc pull` checks data/raw and
data/processed out of the cache, fetching what the cache lacks from the DVC remote, and only
train and evaluate run again. Otherwise, or when neither cache nor remote has the data, the data
stages run again; a log line says why. Either way the raw files are then checked against the
sha256s the run recorded.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

from pipeline.lineage import lock_md5s
from pipeline.paths import LOCK_FILE, PROCESSED_DIRECTORY, RAW_DIRECTORY

logger = logging.getLogger(__name__)

DATA_STAGES = ("download", "preprocess")
# What a fresh worktree lacks and a pull brings back; any other change means the data would differ.
PULLED_PATHS = (RAW_DIRECTORY.as_posix(), PROCESSED_DIRECTORY.as_posix())
MISSING_STATES = {"deleted", "not in cache"}
# --force: the stages run rather than being restored from DVC's run cache.
RECOMPUTE_EVERYTHING = ("repro", "--force")
RECOMPUTE_FROM_TRAIN = ("repro", "--force", "--downstream", "train")


def share_remotes(repository: Path, worktree: Path, dvc: str) -> None:
    """Give the worktree the repository's DVC remotes: its .dvc/config.local (credentials, a remote of
    one's own) and each local folder's path resolved from the repository, which a relative one is
    relative to."""
    local_config = repository / ".dvc" / "config.local"
    if local_config.exists():
        shutil.copy2(local_config, worktree / ".dvc" / "config.local")
    listed = subprocess.run([dvc, "remote", "list"], cwd=repository, capture_output=True, text=True)
    for line in listed.stdout.splitlines():
        name, _, url = line.partition(" ")
        url = url.strip().removesuffix("(default)").strip()
        if url and "://" not in url:
            # Should this fail, the pull does too, and the data stages run instead.
            subprocess.run([dvc, "remote", "modify", "--local", name, "url", url], cwd=worktree, capture_output=True)


def repro_arguments(worktree: Path, dvc: str, environment: dict[str, str]) -> tuple[str, ...]:
    """Pull the data stages' outputs into `worktree` if DVC has them; the `dvc repro` arguments that follow."""
    reason = _why_the_lock_does_not_apply(worktree, dvc, environment)
    if reason is None:
        command = [dvc, "pull", *DATA_STAGES]
        pulled = subprocess.run(command, cwd=worktree, env=environment, capture_output=True, text=True)
        if pulled.returncode == 0:
            summary = "; ".join(line.strip() for line in pulled.stdout.splitlines() if " files " in line)
            logger.info(
                "pulled from DVC (%s) %s: download and preprocess are not run again",
                summary or "everything in the cache",
                ", ".join(f"{path} md5 {md5}" for path, md5 in _locked_outputs(worktree).items()),
            )
            return RECOMPUTE_FROM_TRAIN
        for path in PULLED_PATHS:  # what a failed pull left: the data stages start from nothing
            shutil.rmtree(worktree / path, ignore_errors=True)
        errors = [line for line in pulled.stderr.splitlines() if line.startswith("ERROR")] or ["`dvc pull` failed"]
        reason = f"neither the DVC cache nor the remote has them ({errors[-1].removeprefix('ERROR: ')})"
    logger.info("recomputing %s: %s", " and ".join(PULLED_PATHS), reason)
    return RECOMPUTE_EVERYTHING


def _why_the_lock_does_not_apply(worktree: Path, dvc: str, environment: dict[str, str]) -> str | None:
    """None when the commit's dvc.lock describes the data stages as they stand in `worktree`, else why not."""
    if not (worktree / LOCK_FILE).exists():
        return f"the commit has no {LOCK_FILE}"
    status = subprocess.run(
        [dvc, "status", "--json", *DATA_STAGES], cwd=worktree, env=environment, capture_output=True, text=True
    )
    if status.returncode != 0:
        return f"`dvc status` failed: {status.stderr.strip().splitlines()[-1:]}"
    changes = blocking_changes(json.loads(status.stdout or "{}"))
    if not changes:
        return None
    more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
    return f"the recorded config or code differs from the commit's {LOCK_FILE} ({'; '.join(changes[:3])}{more})"


def blocking_changes(status: dict) -> list[str]:
    """The changes in `dvc status --json` output other than the data outputs being absent."""
    changes = []
    for stage, entries in status.items():
        for entry in entries:
            items = entry.items() if isinstance(entry, dict) else [(entry, None)]
            for kind, paths in items:
                if not isinstance(paths, dict):
                    changes.append(f"{stage}: {kind}")
                    continue
                for path, state in paths.items():
                    if path in PULLED_PATHS and state in MISSING_STATES:
                        continue
                    described = state if isinstance(state, str) else ", ".join(f"{k} {v}" for k, v in state.items())
                    changes.append(f"{stage}: {kind.removeprefix('changed ')} {path} {described}")
    return changes


def _locked_outputs(worktree: Path) -> dict[str, str]:
    recorded = lock_md5s(DATA_STAGES, worktree / LOCK_FILE)
    return {path: md5 for stage in recorded.values() for path, md5 in stage["outs"].items() if path in PULLED_PATHS}
