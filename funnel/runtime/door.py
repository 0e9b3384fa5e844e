"""Who may come in, decided before a call costs anything: a known client, with the method's scope,
for a client bound to its users a valid user token, within its rate limit.

A refusal here is made as cheaply as gRPC allows (no exception, no request id, no log line per call:
`RefusalLog` writes one line per kind, method and client every 10 s with how many there were), so a
flood of refused calls does not become this process's work. A client over its rate waits for its
refusal until its next token is due (`hold`): one that retries at once, ignoring the hint, is paced
to its rate instead of spinning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from funnel.runtime.clients import Client
from funnel.runtime.quotas import ClientQuotas
from funnel.runtime.user_tokens import METHOD_USERS, USER_TOKEN_KEY, UserTokens

log = logging.getLogger("funnel.rpc")
# Trailer of a call refused for its client's rate limit: when a token is back.
RETRY_AFTER_KEY = "retry-after-ms"
MAX_HOLD_S = 1.0  # the longest a refusal for a client's rate is held
MAX_HELD = 64  # a client's refusals held at once; beyond, an open-loop flood is the ingress's to stop


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    message: str
    trailer: tuple[tuple[str, str], ...] = ()
    hold_s: float = 0.0  # how long to wait before answering (a client over its rate)


_UNAUTHENTICATED = Refusal(
    grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token in the 'authorization' metadata"
)


class Door:
    def __init__(self, quotas: ClientQuotas | None = None, user_tokens: UserTokens | None = None) -> None:
        self.quotas = quotas  # per-client rate limits
        self.user_tokens = user_tokens  # for clients bound to their users
        self.refusals = RefusalLog()
        self._held: dict[str, int] = {}  # refusals being held, per client

    def check(
        self, caller: Client | None, metadata: Sequence[tuple[str, Any]] | None, method: str
    ) -> tuple[Refusal | None, str | None]:
        """(a refusal or None, the user token's subject for a bound client: the caller checks it
        against the request once the request is parsed)."""
        if caller is None:
            self.refusals.note("unauthenticated", method, "")
            return _UNAUTHENTICATED, None
        if not caller.may_call(method) or (caller.bind_user and method not in METHOD_USERS):
            self.refusals.note("permission denied", method, caller.name)
            scopes = ", ".join(sorted(caller.scopes))
            return Refusal(
                grpc.StatusCode.PERMISSION_DENIED, f"client {caller.name} may not call {method} ({scopes})"
            ), None
        subject = None
        if caller.bind_user:
            subject = self.user_tokens.subject(metadata) if self.user_tokens is not None else None
            if subject is None:
                self.refusals.note("without a valid user token", method, caller.name)
                message = f"client {caller.name} acts for its users: a valid user token in {USER_TOKEN_KEY!r} is needed"
                return Refusal(grpc.StatusCode.UNAUTHENTICATED, message), None
        wait_s = self.quotas.take(caller) if self.quotas is not None else 0.0
        if wait_s:
            self.refusals.note("over its rate limit", method, caller.name)
            retry_ms = max(1, round(wait_s * 1000))
            message = f"client {caller.name} is over its rate limit; retry in {retry_ms} ms"
            return Refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED, message, ((RETRY_AFTER_KEY, str(retry_ms)),), wait_s
            ), None
        return None, subject

    async def hold(self, client: str, wait_s: float) -> None:
        """Wait up to MAX_HOLD_S before a refusal is answered, with at most MAX_HELD of a client's
        calls waiting at once (beyond them the refusal is immediate)."""
        held = self._held.get(client, 0)
        if held >= MAX_HELD:
            return
        self._held[client] = held + 1
        try:
            await asyncio.sleep(min(wait_s, MAX_HOLD_S))
        finally:
            self._held[client] -= 1


class RefusalLog:
    """One log line per kind of refusal, method and client every `every_s` at most, with how many
    there were since: a flood is visible in the log without the log becoming its cost."""

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._since: dict[tuple[str, str, str], tuple[float, int]] = {}

    def note(self, kind: str, method: str, client: str) -> None:
        key = (kind, method, client)
        now = self._clock()
        logged_at, count = self._since.get(key, (float("-inf"), 0))
        if now - logged_at < self.every_s:
            self._since[key] = (logged_at, count + 1)
            return
        self._since[key] = (now, 0)
        log.warning("calls refused at the door", extra={"refusal": kind, "method": method, "client": client,
                                                        "refused_since_last_line": count + 1})  # fmt: skip
