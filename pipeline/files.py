"""Reading, hashing and writing the pipeline's files: every output is written beside its final
name and renamed into place, so an interrupted stage never leaves a half-written file under it."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The mode of a file only its owner may read (passwords, backups).
PRIVATE = 0o600


@contextmanager
def atomic_path(path: Path, mode: int = 0o666) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed to `path` when the block succeeds. The file gets
    `mode` less the umask, as `open` would give it (PRIVATE: only its owner reads it, from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder (so the rename is atomic) and same suffix (Keras and NumPy choose the format by it). Not
    # mkstemp: its mode 0600 would stay on every output after the rename.
    temporary = path.with_name(f".{path.stem}.{secrets.token_hex(6)}{path.suffix}")
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: Path, text: str, mode: int = 0o666) -> None:
    with atomic_path(path, mode) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`; {} when the file is missing or holds something else (a record, not an input)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, algorithm).hexdigest()
