"""The few git queries the pipeline makes, in one place."""

import subprocess
from pathlib import Path

from pipeline.errors import PipelineError


def git(*arguments: str, cwd: Path | None = None) -> str:
    """The output of a git command; PipelineError with git's message when it fails."""
    try:
        result = subprocess.run(["git", *arguments], cwd=cwd, capture_output=True, text=True)
    except OSError as error:
        raise PipelineError(f"git is not available: {error}") from None
    if result.returncode != 0:
        raise PipelineError(f"`git {' '.join(arguments)}` failed: {result.stderr.strip()}")
    return result.stdout.strip()


def git_or_empty(*arguments: str, cwd: Path | None = None) -> str:
    """The output of a git command, or "" outside a git repository (or without git)."""
    try:
        return git(*arguments, cwd=cwd)
    except PipelineError:
        return ""


def is_commit(revision: str, cwd: Path | None = None) -> bool:
    return bool(git_or_empty("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", cwd=cwd))


def repository_top(cwd: Path | None = None) -> Path:
    return Path(git_or_empty("rev-parse", "--show-toplevel", cwd=cwd) or ".").resolve()
