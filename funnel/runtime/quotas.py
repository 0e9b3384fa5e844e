"""Per-client rate limits: one token bucket per named client, so one client cannot drown a public
service for the others.

A call takes a token; tokens refill at the client's rate up to its burst. A call that finds the
bucket empty is refused at once with RESOURCE_EXHAUSTED and the time until a token is back (in the
message and the `retry-after-ms` trailer), before it takes an admission slot or its bytes are
parsed. The buckets live in each process (as Envoy's local rate limit does): with N replicas behind a
balancer a client gets about N times its rate in all, so set the rate per replica.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from funnel.runtime.clients import Client
from funnel.runtime.metrics import QUOTA_REFUSED


@dataclass
class _Bucket:
    rate: float
    burst: float
    tokens: float
    stamp: float


class ClientQuotas:
    """`rate_per_s` calls a second and `burst` at once per client, unless the client's own line in
    the credentials file says otherwise; a rate of 0 turns quotas off."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, client: Client) -> float:
        """0 when the call may go ahead, else the seconds until the client's next token."""
        rate = client.rate_per_s or self.rate_per_s
        if rate <= 0:
            return 0.0
        burst = float(client.burst or self.burst or max(1.0, 2 * rate))
        now = self._clock()
        bucket = self._buckets.get(client.name)
        if bucket is None or bucket.rate != rate or bucket.burst != burst:  # new, or its line changed
            bucket = self._buckets[client.name] = _Bucket(rate, burst, burst, now)
        bucket.tokens = min(bucket.burst, bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        QUOTA_REFUSED.labels(client.name).inc()
        return (1.0 - bucket.tokens) / rate
