"""Follow the newest bundle: what ranking and re-ranking run so a published bundle reaches them
without a restart, as it reaches retrieval (whose index swap has its own admin call and metrics)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from funnel.artifacts.store import ArtifactError, latest_version

log = logging.getLogger("funnel.artifacts")


async def follow_newest(
    bundles: Path, poll_s: float, current: Callable[[], str], swap: Callable[[Path], Awaitable[None]]
) -> None:
    """Every `poll_s`, swap to a bundle newer than `current()`. One that fails to load is logged
    and never tried again; the process keeps serving the one it has."""
    failed: set[str] = set()
    while True:
        await asyncio.sleep(poll_s)
        newest = latest_version(bundles)
        if newest is None or newest.name <= current() or newest.name in failed:
            continue
        try:
            await swap(newest)
        except (ArtifactError, OSError, RuntimeError, KeyError, ValueError) as exc:
            failed.add(newest.name)
            log.error(
                "new bundle rejected; still serving the old one", extra={"bundle": newest.name, "error": str(exc)}
            )
