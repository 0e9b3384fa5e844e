"""Child processes in their own process groups, so stopping one stops everything it spawned."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from launcher.ports import PortTaken, says_port_taken


def spawn(
    command: Sequence[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


def stop_group(pid: int, timeout_s: float = 15.0) -> None:
    """SIGTERM the process group, wait for the leader to exit, SIGKILL the group if it does not."""
    stop_groups([pid], timeout_s)


def stop_groups(pids: Sequence[int], timeout_s: float = 15.0) -> None:
    """`stop_group` for several process groups at once: each drains while the others do, so
    stopping them takes the slowest one's time, not the sum."""
    signalled = []
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
            signalled.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(pid) for pid in signalled):
        time.sleep(0.05)
    for pid in signalled:
        try:
            os.killpg(pid, signal.SIGKILL)  # also reaps anything the leader left behind in its group
        except ProcessLookupError:
            pass
    while any(alive(pid) for pid in signalled) and time.monotonic() < deadline + 5:
        time.sleep(0.05)


def tail(path: Path, lines: int = 20, since: int = 0) -> str:
    """The last `lines` lines of a log, of what was written after byte `since` (logs are appended to
    across restarts)."""
    try:
        with path.open("rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def log_size(path: Path) -> int:
    """Where a process started now begins writing to its (appended) log."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def wait_until_ready(
    name: str,
    ready: Callable[[], bool],
    process: subprocess.Popen | None,
    log_path: Path,
    log_start: int,
    timeout_s: float,
    poll_s: float = 0.1,
) -> None:
    """Until `ready()` holds for a server binary (Triton, Redis) started at `log_start` of its log.
    PortTaken when it exited saying a port is in use, RuntimeError when it exited otherwise (its log
    lines of this start in both), TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and not alive(process.pid):
            log = tail(log_path, since=log_start)
            if says_port_taken(log):
                raise PortTaken(f"{name}: a port it was given is taken:\n{log}")
            raise RuntimeError(f"{name} exited during start-up:\n{log}")
        if ready():
            return
        time.sleep(poll_s)
    raise TimeoutError(f"{name} not ready after {timeout_s:.0f} s:\n{tail(log_path, since=log_start)}")
