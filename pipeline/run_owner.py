"""The tag `process.owner` = `host=<name> pid=<pid> start_time=<ticks after boot> boot_id=<id>`, which names the
process owning a RUNNING MLflow run (pipeline.tracking ends FAILED those whose owner is gone): a pid can be
reused once its process is gone, its start time within one boot cannot.
"""

import os
import socket
from pathlib import Path

import psutil

OWNER = "process.owner"
FIELDS = ("host", "pid", "start_time", "boot_id")
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
    pid = os.getpid()
    values = (socket.gethostname(), str(pid), process_start_time(pid) or "", boot_id())
    return {OWNER: " ".join(f"{field}={value}" for field, value in zip(FIELDS, values, strict=True))}


def owner_of(tags: dict[str, str]) -> dict[str, str]:
    """The owner a run's tags name, as {host, pid, start_time, boot_id}; {} for a run without one."""
    if OWNER in tags:
        return dict(field.split("=", 1) for field in tags[OWNER].split() if "=" in field)
    # Runs started before the owner was one tag name it in four: process.host, process.pid, ...
    return {field: tags[f"process.{field}"] for field in FIELDS if f"process.{field}" in tags}


def owner_is_alive(owner: dict[str, str]) -> bool:
    """Whether the process `owner` (of this host) names is still running."""
    pid = owner.get("pid", "")
    if not pid.isdigit():
        return True  # not ours to judge
    if BOOT_ID_FILE.is_file():
        return owner.get("boot_id") == boot_id() and process_start_time(int(pid)) == owner.get("start_time")
    # No /proc (macOS, Windows): the pid alone; a reused one keeps a dead owner's run RUNNING, never the reverse.
    return psutil.pid_exists(int(pid))
