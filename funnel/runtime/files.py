"""Files a process re-reads while it runs (the policy, the credentials): whether they changed."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_digest(path: Path) -> str:
    """SHA-256 of the file's bytes; empty while it cannot be read (a mounted Secret or a policy being
    swapped in: the next poll sees the new one)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""
