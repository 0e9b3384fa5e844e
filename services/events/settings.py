"""Events service settings (flags or FUNNEL_* environment variables)."""

from __future__ import annotations

from dataclasses import dataclass

from funnel.live.schema import LogBounds, Retention, cluster_setting, password_file_setting, store_url_problem
from funnel.runtime.config import (
    ServerSettings,
    client_burst_setting,
    client_rate_setting,
    non_empty,
    non_negative,
    port_setting,
    positive,
    setting,
)


@dataclass(frozen=True, kw_only=True)
class EventsSettings(ServerSettings):
    port: int = port_setting(50091, "gRPC port of the public Events API")
    client_rate_per_s: float = client_rate_setting(100.0, calls="calls, each of up to max_events events,")
    client_burst: int = client_burst_setting(200)
    state_store: str = setting(
        help="Redis URL of the online store (redis://host:port/db)", checks=[non_empty, store_url_problem]
    )
    state_store_password_file: str = password_file_setting()
    state_store_cluster: bool = cluster_setting()
    replica_acks: int = setting(
        0,
        help="replicas of the store's master that must confirm an event batch before it is acknowledged (WAIT): "
        "with 1, a master killed right after answering loses nothing its promoted replica lacks; a batch "
        "not confirmed in replica_timeout_ms is UNAVAILABLE (written on the master: its retry counts duplicates)",
        checks=[non_negative],
    )
    replica_timeout_ms: int = setting(
        1000, help="most the replicas may take to confirm a batch (with replica_acks)", checks=[positive]
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
    served_cap: int = setting(1000, help="items one user's served set holds at most, newest", checks=[positive])
    user_ttl_seconds: float = setting(
        90 * 24 * 3600.0, help="a user's live state is dropped after this long without an event", checks=[positive]
    )
    idempotency_seconds: int = setting(
        24 * 3600,
        help="how long an event id is remembered per client and user: a batch retried within it is recognised "
        "(duplicates) and an id reused with another payload refused (ALREADY_EXISTS); clients must not retry "
        "later than this",
        checks=[positive],
    )
    user_events_per_window: int = setting(
        1000,
        help="events one user may send in a window, whichever client sends them; beyond it the batch is refused "
        "(RESOURCE_EXHAUSTED) and nothing of it written; 0 = no cap",
        checks=[non_negative],
    )
    user_window_seconds: int = setting(60, help="the per-user cap's window", checks=[positive])
    log_max_events: int = setting(
        10_000_000,
        help="most entries the event log holds that were not exported; beyond it writes are refused "
        "(RESOURCE_EXHAUSTED) until `training.export_events` runs: nothing acknowledged is ever trimmed",
        checks=[positive],
    )
    log_retention_seconds: float = setting(
        24 * 3600.0,
        help="how long an exported entry stays in the log (for a second export) before it is trimmed",
        checks=[non_negative],
    )
    store_check_seconds: float = setting(
        1.0,
        help="how often the store's durability (fsync of every write), memory and log are checked: a store that "
        "stops fsyncing gets no acknowledgement and the service turns NOT_SERVING",
        checks=[positive],
    )

    def retention(self) -> Retention:
        return Retention(
            recent_cap=self.recent_cap,
            dismissed_cap=self.dismissed_cap,
            served_ttl_ms=int(self.served_ttl_seconds * 1000),
            served_cap=self.served_cap,
            user_ttl_s=int(self.user_ttl_seconds),
            idempotency_ttl_s=self.idempotency_seconds,
            user_events_per_window=self.user_events_per_window,
            user_window_s=self.user_window_seconds,
        )

    def log_bounds(self) -> LogBounds:
        return LogBounds(max_events=self.log_max_events, retention_ms=int(self.log_retention_seconds * 1000))
