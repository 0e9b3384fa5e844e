"""Retrieval settings (flags or FUNNEL_* environment variables)."""

from __future__ import annotations

from dataclasses import dataclass

from funnel.runtime.config import ServerSettings, non_empty, non_negative, port_setting, positive, setting


@dataclass(frozen=True, kw_only=True)
class RetrievalSettings(ServerSettings):
    port: int = port_setting(50061)
    access_log: bool = setting(
        False,
        help="write one JSON log line per served call (off: the gateway logs every client request with its "
        "request id, and refused or failed calls are logged here anyway)",
    )
    artifact_dir: str = setting(
        help="artifact root; the newest complete bundle under <dir>/bundles is served", checks=[non_empty]
    )
    shard_index: int = setting(0, help="which shard of the catalog this process serves", checks=[non_negative])
    shard_count: int = setting(1, help="how many shards the catalog is split into", checks=[positive])
    search_params: str = setting(
        "", help="FAISS search parameters for this deployment, e.g. 'efSearch=128' or 'nprobe=16'"
    )
    max_recent_items: int = setting(100, help="largest recent_item_ids list accepted", checks=[positive])
    reload_poll_seconds: float = setting(
        5.0, help="how often to look for a newer bundle and hot-swap to it; 0 = only on Reload", checks=[non_negative]
    )
    index_factory: str = setting(
        "Flat", help="FAISS index_factory string (inner product), e.g. Flat, HNSW32", checks=[non_empty]
    )
    max_candidates: int = setting(1000, help="largest num_candidates a request may ask for", checks=[positive])
    max_excluded: int = setting(1000, help="largest exclude_item_ids list accepted", checks=[positive])
    exclude_history: bool = setting(
        True,
        help="leave out items in the user's stored history, so no candidate slot goes to an item the "
        "policy's exclude_consumed rule would drop (turn both off where people re-consume)",
    )
    policy_path: str = setting(
        "config/policy.yaml",
        help="policy file whose content rules (blocked items and providers, maturity, regions) every source "
        "applies inside its search",
        checks=[non_empty],
    )
    policy_poll_seconds: float = setting(
        1.0, help="how often the policy file is checked for changes (hot reload); 0 = never", checks=[non_negative]
    )
    artifact_poll_seconds: float = setting(
        1.0, help="how often to look for a bundle while none is loaded", checks=[positive]
    )

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.shard_index >= self.shard_count:
            problems.append(f"shard_index={self.shard_index} must be < shard_count={self.shard_count}")
        return problems
