"""A sampling profile of one running process (py-spy), taken while load runs against it."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def profile_process(pid: int, seconds: float, load: Callable[[], object], top: int = 15) -> dict:
    """Sample `pid` at 200 Hz for `seconds` while `load()` runs; the hottest functions, by own and
    inclusive share of the samples (idle time excluded, so shares are of time spent working)."""
    spy = Path(sys.prefix) / "bin" / "py-spy"
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "profile.txt"
        command = [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
                   "--format", "raw", "--output", str(raw), "--nonblocking"]  # fmt: skip
        recorder = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        load()
        try:
            _, error = recorder.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            recorder.kill()
            return {"error": "py-spy did not finish"}
        if recorder.returncode != 0 or not raw.exists():
            return {"error": f"py-spy failed ({recorder.returncode}): {error.strip()[-300:]}"}
        return summarise(raw.read_text(), top)


def summarise(raw: str, top: int) -> dict:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    share = lambda c: round(100 * c / max(total, 1), 1)  # noqa: E731
    return {
        "samples": total,
        "own": [(frame, share(c)) for frame, c in own.most_common(top)],
        "inclusive": [(frame, share(c)) for frame, c in inclusive.most_common(top + 12)],
    }
