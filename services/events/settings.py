"""Events service settings (flags or FUNNEL_* environment variables)."""

from __future__ import annotations

from dataclasses import dataclass

from funnel.live.schema import Retention, store_url_problem
from funnel.runtime.config import ServerSettings, non_empty, non_negative, port_setting, positive, setting


@dataclass(frozen=True, kw_only=True)
class EventsSettings(ServerSettings):
    port: int = port_setting(50091, "gRPC port of the public Events API")
    state_store: str = setting(
        help="Redis URL of the online store (redis://host:port/db)", checks=[non_empty, store_url_problem]
    )
    store_timeout_ms: float = setting(
        2000.0, help="most one write may take before the call fails UNAVAILABLE", checks=[positive]
    )
    require_fsync: bool = setting(
        True,
        help="acknowledge events only when the store fsyncs every write (appendonly yes, appendfsync always); "
        "off: a store that fsyncs once a second is accepted, and up to a second of acknowledged events can be "
        "lost if its host fails",
    )
    max_events: int = setting(1000, help="most events one call may carry", checks=[positive])
    max_clock_skew_seconds: float = setting(
        300.0, help="how far in the future an event's timestamp may be (clients' clocks drift)", checks=[non_negative]
    )
    recent_cap: int = setting(200, help="positive interactions kept per user, newest", checks=[positive])
    dismissed_cap: int = setting(1000, help="dismissed items kept per user, newest", checks=[positive])
    served_ttl_seconds: float = setting(
        1800.0, help="how long an impression keeps its item out of the user's answers", checks=[positive]
    )
    idempotency_seconds: int = setting(
        7 * 24 * 3600, help="how long an event id is remembered (a replay within it changes nothing)", checks=[positive]
    )
    stream_max_events: int = setting(
        10_000_000,
        help="events the log keeps (oldest trimmed beyond it, approximately): export more often than it fills",
        checks=[positive],
    )
    store_poll_seconds: float = setting(0.5, help="how often to try the store while it is unreachable at start",
                                        checks=[positive])  # fmt: skip

    def retention(self) -> Retention:
        return Retention(
            recent_cap=self.recent_cap,
            dismissed_cap=self.dismissed_cap,
            served_ttl_ms=int(self.served_ttl_seconds * 1000),
            idempotency_ttl_s=self.idempotency_seconds,
            stream_max_events=self.stream_max_events,
        )
