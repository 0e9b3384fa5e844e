"""Re-ranking settings (flags or FUNNEL_* environment variables)."""

from __future__ import annotations

from dataclasses import dataclass

from funnel.runtime.config import ServerSettings, non_empty, non_negative, port_setting, positive, setting


@dataclass(frozen=True, kw_only=True)
class RerankingSettings(ServerSettings):
    port: int = port_setting(50081)
    access_log: bool = setting(
        False,
        help="write one JSON log line per served call (off: the gateway logs every client request with its "
        "request id, and refused or failed calls are logged here anyway)",
    )
    artifact_dir: str = setting(
        help="artifact root; item metadata comes from the newest bundle under <dir>/bundles", checks=[non_empty]
    )
    policy_path: str = setting("config/policy.yaml", help="policy file (YAML)", checks=[non_empty])
    policy_poll_seconds: float = setting(
        1.0, help="how often the policy file is checked for changes (hot reload); 0 = never", checks=[non_negative]
    )
    max_candidates: int = setting(2000, help="largest candidate list a request may carry", checks=[positive])
    max_results: int = setting(200, help="largest num_results a request may ask for", checks=[positive])
    max_excluded: int = setting(1000, help="largest exclude_item_ids list accepted", checks=[positive])
    max_recent_items: int = setting(100, help="largest recent_item_ids list accepted", checks=[positive])
    reload_poll_seconds: float = setting(
        5.0, help="how often to look for a newer bundle, whose catalog then replaces the served one (0 = never)",
        checks=[non_negative],
    )  # fmt: skip
    artifact_poll_seconds: float = setting(
        1.0, help="how often to look for a bundle while none is loaded", checks=[positive]
    )
