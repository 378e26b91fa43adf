"""Checking a file against the size and checksum its dataset config pins."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.dataset_config import FileSpec
from pipeline.errors import DataError
from pipeline.paths import rerun_hint


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, algorithm).hexdigest()


def checksum_problem(path: Path, spec: FileSpec) -> str | None:
    """Why `path` is not the file `spec` pins (size, then sha256 or else md5), or None if it is."""
    size = path.stat().st_size
    if size != spec.size:
        return f"size {size:,} bytes, expected {spec.size:,}"
    algorithm, expected = ("sha256", spec.sha256) if spec.sha256 else ("md5", spec.md5)
    actual = file_digest(path, algorithm)
    if actual != expected:
        return f"{algorithm} {actual}, expected {expected}"
    return None


def verify_checksum(path: Path, spec: FileSpec) -> None:
    """Raise DataError unless `path` is the file `spec` pins."""
    if not path.exists():
        raise DataError(f"{path} not found: {rerun_hint('download')}")
    problem = checksum_problem(path, spec)
    if problem is not None:
        raise DataError(f"{path}: {problem}; delete it and download again")
