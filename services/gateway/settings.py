"""Gateway settings (flags or FUNNEL_* environment variables)."""

from __future__ import annotations

from dataclasses import dataclass

from funnel import sources
from funnel.fusion import DEFAULT_LIMITS
from funnel.live.schema import ReadLimits, Retention, cluster_setting, password_file_setting, store_url_problem
from funnel.runtime.channels import listed_hosts
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
class GatewaySettings(ServerSettings):
    port: int = port_setting(50051, "gRPC port of the public Recommender API")
    client_rate_per_s: float = client_rate_setting(200.0)
    client_burst: int = client_burst_setting(400)
    retrieval_shards: str = setting(
        help="retrieval addresses: shards separated by ';', replicas of a shard by ',' "
        "(e.g. '127.0.0.1:50061,127.0.0.1:50062;127.0.0.1:50063' or 'dns:///retrieval-0:50061;dns:///retrieval-1:50061')",
        checks=[non_empty],
    )
    ranking_target: str = setting(help="ranking address(es), replicas separated by ','", checks=[non_empty])
    reranking_target: str = setting(help="re-ranking address(es), replicas separated by ','", checks=[non_empty])
    artifact_dir: str = setting(help="artifact root; the catalog for the content-policy fallback", checks=[non_empty])
    policy_path: str = setting(
        "config/policy.yaml",
        help="policy file whose content rules the gateway enforces on fallback",
        checks=[non_empty],
    )
    stages: str = setting(
        "retrieval,ranking,reranking",
        help="stages the gateway calls; a stage left out is SKIPPED (stage ablations in `make eval`, or a "
        "stage switched off in an incident); content policy is applied whatever is left out",
        checks=[non_empty],
    )
    default_deadline_ms: float = setting(250.0, help="total budget when the client sets no deadline", checks=[positive])
    retrieval_budget_ms: float = setting(60.0, help="most a retrieval fan-out may take", checks=[positive])
    ranking_budget_ms: float = setting(80.0, help="most a ranking call may take", checks=[positive])
    reranking_budget_ms: float = setting(
        60.0,
        help="most a re-ranking call may take (the policy's greedy rules grow with num_results: 100 results cost "
        "about 2.5 times 10, and under a burst the last stage has the longest queue)",
        checks=[positive],
    )
    local_reserve_ms: float = setting(
        5.0, help="least time always kept back for the gateway's own fallback work and reply", checks=[non_negative]
    )
    local_reserve_fraction: float = setting(
        0.1,
        help="share of the total budget kept back the same way (timers fire late on a busy host)",
        checks=[non_negative],
    )
    ann_candidates: int = setting(
        DEFAULT_LIMITS[sources.ANN], help="ANN candidates kept after merging shards", checks=[positive]
    )
    covisit_candidates: int = setting(
        DEFAULT_LIMITS[sources.COVISIT],
        help="items co-visited with the user's latest items (item-to-item)",
        checks=[non_negative],
    )
    popular_candidates: int = setting(
        DEFAULT_LIMITS[sources.POPULAR], help="globally popular candidates added beside ANN ones", checks=[non_negative]
    )
    category_candidates: int = setting(
        DEFAULT_LIMITS[sources.CATEGORY_POPULAR],
        help="popular candidates of the user's favourite categories",
        checks=[non_negative],
    )
    fresh_candidates: int = setting(
        DEFAULT_LIMITS[sources.FRESH], help="newest items, so new content gets exposure", checks=[non_negative]
    )

    def source_limits(self) -> dict[str, int]:
        """Candidates kept per source after merging shards (the order training's fusion uses)."""
        limits = {
            sources.ANN: self.ann_candidates,
            sources.COVISIT: self.covisit_candidates,
            sources.CATEGORY_POPULAR: self.category_candidates,
            sources.POPULAR: self.popular_candidates,
            sources.FRESH: self.fresh_candidates,
        }
        return {source: n for source, n in limits.items() if n > 0}

    retry_budget_ratio: float = setting(
        0.1,
        help="retries and hedges allowed per first stage call (0.1 = at most 10% extra calls)",
        checks=[non_negative],
    )
    retry_budget_floor_per_s: float = setting(
        5.0,
        help="retries and hedges allowed a second whatever the traffic, so a quiet gateway can retry too",
        checks=[non_negative],
    )
    hedge_quantile: float = setting(
        0.95,
        help="a retrieval shard call still out after this quantile of its recent latencies is sent to a "
        "second replica too, first answer wins (0 = no hedging)",
        checks=[non_negative],
    )
    min_hedge_delay_ms: float = setting(3.0, help="never hedge a shard call sooner than this", checks=[non_negative])
    quality_floor: float = setting(
        0.25,
        help="smallest share of the candidate counts the gateway falls back to while stages answer near "
        "their budgets (1 = never shrink)",
        checks=[positive],
    )
    fallback_candidates: int = setting(
        500, help="popular items the gateway keeps for when retrieval fails", checks=[positive]
    )
    max_results: int = setting(100, help="largest num_results a client may ask for", checks=[positive])
    max_excluded: int = setting(1000, help="largest exclude_item_ids list a client may send", checks=[positive])
    max_recent_items: int = setting(100, help="largest recent_item_ids list a client may send", checks=[positive])

    state_store: str = setting(
        "",
        help="Redis URL of the online store (redis://host:port/db): each request reads the user's live state "
        "(recent interactions, dismissals, what was served) and the answer is recorded as impressions; empty: "
        "answers use the bundle's stored history only",
        checks=[store_url_problem],
    )
    state_store_password_file: str = password_file_setting()
    state_store_cluster: bool = cluster_setting()
    # The read itself takes under a millisecond; its wall time is mostly the gateway's own event loop
    # when busy. 100-result requests from 8 clients at once on 2 cores took it to p99 13.7 ms (6% of
    # answers degraded at a 10 ms budget); 25 ms keeps it whole there, and a hung store costs an
    # answer at most a tenth of the 250 ms default deadline.
    state_budget_ms: float = setting(
        25.0, help="most reading a user's live state may take; later, the answer uses stored history (DEGRADED)",
        checks=[positive],
    )  # fmt: skip
    live_recent_items: int = setting(
        ReadLimits.recent, help="latest live interactions sent on as recent items (user tower, ranking features, seen)",
        checks=[non_negative],
    )  # fmt: skip
    live_dismissed_items: int = setting(
        ReadLimits.dismissed, help="dismissed items left out, newest", checks=[non_negative]
    )
    served_filter_seconds: float = setting(
        Retention.served_ttl_ms / 1000,
        help="items served to the user within this long are left out of their next answers, so each answer "
        "shows something new (0 = never left out; impressions are recorded all the same)",
        checks=[non_negative],
    )
    served_filter_items: int = setting(
        ReadLimits.served, help="most served items left out, newest", checks=[non_negative]
    )
    record_impressions: bool = setting(True, help="record what each answer served (off the request path)")
    impression_queue: int = setting(
        10_000, help="answers waiting to be recorded; beyond it impressions are dropped and counted", checks=[positive]
    )
    impression_linger_ms: float = setting(
        50.0,
        help="how long the recorder gathers answers before one store write: at 50 req/s, 50 ms turns "
        "about three writes (and fsyncs) into one; a user's next ask rarely comes sooner",
        checks=[non_negative],
    )

    def retention(self) -> Retention:
        return Retention(served_ttl_ms=int(max(self.served_filter_seconds, 1.0) * 1000))

    def enabled_stages(self) -> set[str]:
        return {part.strip() for part in self.stages.split(",") if part.strip()}

    def shard_targets(self) -> list[str]:
        return [part.strip() for part in self.retrieval_shards.split(";") if part.strip()]

    def validate(self) -> list[str]:
        problems = super().validate()
        if not self.shard_targets():
            problems.append("retrieval_shards names no shard")
        if self.local_reserve_ms >= self.default_deadline_ms:
            problems.append("local_reserve_ms must be smaller than default_deadline_ms")
        if self.tls_ca_file and not self.tls_server_name:
            targets = [*self.shard_targets(), self.ranking_target, self.reranking_target]
            if any(len(listed_hosts(t)) > 1 for t in targets):
                problems.append(
                    "a replica list spans several hosts, so TLS has no one name to verify: set tls_server_name"
                )
        unknown = self.enabled_stages() - {"retrieval", "ranking", "reranking"}
        if unknown or "retrieval" not in self.enabled_stages():
            problems.append(
                f"stages must include retrieval and name only retrieval, ranking, reranking (got {self.stages!r})"
            )
        if self.hedge_quantile >= 1:
            problems.append("hedge_quantile must be below 1 (0 turns hedging off)")
        if self.quality_floor > 1:
            problems.append("quality_floor must be at most 1")
        if self.local_reserve_fraction >= 0.5:
            problems.append("local_reserve_fraction must be below 0.5, or stages get less time than the reserve")
        return problems
