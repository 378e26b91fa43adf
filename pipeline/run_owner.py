"""Which process owns a RUNNING MLflow run, in one tag: `process.owner`.

The tag reads `host=<name> pid=<pid> start_time=<ticks after boot> boot_id=<id>`.
A pid alone can be reused by a later process once the owner is gone; its start
time within one boot cannot. pipeline.tracking sets the tag on every run it
starts or reopens, and ends FAILED the RUNNING runs of this host whose owner is
gone.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

OWNER = "process.owner"
# Runs started before the owner was one tag name it in four.
LEGACY_OWNER_TAGS = {
    "host": "process.host",
    "pid": "process.pid",
    "start_time": "process.start_time",
    "boot_id": "process.boot_id",
}
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


def process_start_time(pid: int) -> str | None:
    """When process `pid` started, in clock ticks after boot; None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; field 2, the name, may hold spaces and ")"


def boot_id() -> str:
    return BOOT_ID_FILE.read_text().strip() if BOOT_ID_FILE.is_file() else ""


def owner_tags() -> dict[str, str]:
    """The tag that names this process as the owner of a run."""
    pid = os.getpid()
    owner = {"host": socket.gethostname(), "pid": str(pid), "start_time": process_start_time(pid) or ""}
    owner["boot_id"] = boot_id()
    return {OWNER: " ".join(f"{field}={value}" for field, value in owner.items())}


def owner_of(tags: dict[str, str]) -> dict[str, str]:
    """The owner a run's tags name, as {host, pid, start_time, boot_id}; {} for a run without one."""
    if OWNER in tags:
        return dict(field.split("=", 1) for field in tags[OWNER].split() if "=" in field)
    return {field: tags[tag] for field, tag in LEGACY_OWNER_TAGS.items() if tag in tags}


def owner_is_alive(owner: dict[str, str]) -> bool:
    """Whether the process `owner` (of this host) names is still running."""
    try:
        pid = int(owner["pid"])
    except (KeyError, ValueError):
        return True  # not ours to judge
    if BOOT_ID_FILE.is_file():
        return owner.get("boot_id") == boot_id() and process_start_time(pid) == owner.get("start_time")
    if os.name != "posix":
        return True  # no probe: on Windows, os.kill(pid, 0) would send Ctrl+C
    try:  # No /proc (macOS): the pid alone; a reused one keeps a dead owner's run RUNNING, never the reverse.
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
