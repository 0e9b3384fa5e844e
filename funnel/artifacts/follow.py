"""Follow the newest bundle: what every stage runs so a published bundle reaches it without a
restart (retrieval swaps its index, ranking its features and Triton's model, re-ranking its catalog)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from funnel.artifacts.store import ArtifactError, latest_version

log = logging.getLogger("funnel.artifacts")


async def follow_newest(
    bundles: Path, poll_s: float, current: Callable[[], str], swap: Callable[[Path], Awaitable[object]]
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
