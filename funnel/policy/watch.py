"""Hot reload of the policy file: changed bytes are parsed and validated in full before anything uses
them; a file that fails is rejected (logged and counted) and the current policy keeps serving."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from funnel.policy.document import PolicyDocument, PolicyError, load_policy
from funnel.runtime.files import file_digest
from funnel.runtime.metrics import POLICY_RELOADS

log = logging.getLogger("funnel.policy")


async def watch_policy(
    path: Path, poll_s: float, apply: Callable[[PolicyDocument], Awaitable[None]], current: Callable[[], str]
) -> None:
    """Poll `path` every `poll_s`; hand each new valid policy to `apply` (which may raise
    PolicyError too, e.g. a rule that contradicts the catalog). Runs until cancelled."""
    seen = file_digest(path)
    while True:
        await asyncio.sleep(poll_s)
        now = file_digest(path)
        if now == seen:
            continue
        seen = now
        serving = current()
        try:
            await apply(load_policy(path))
        except PolicyError as exc:
            POLICY_RELOADS.labels("rejected").inc()
            log.error("policy rejected; the current one stays", extra={"serving": serving, "error": str(exc)})
            continue
        POLICY_RELOADS.labels("loaded").inc()
        log.info("policy reloaded", extra={"from": serving, "to": current()})
