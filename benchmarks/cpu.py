"""CPU time of processes and their children, from /proc: what each request costs each process."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and int(stat[1]) == pid:
            found.append(int(entry.name))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live children (Triton's python-backend stubs)."""
    total = 0.0
    for process in (pid, *children(pid)):
        stat = _stat(process)
        if stat is not None:
            total += (int(stat[11]) + int(stat[12])) / TICK
    return total
