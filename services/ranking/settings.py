"""Ranking settings (flags or FUNNEL_* environment variables)."""

from __future__ import annotations

from dataclasses import dataclass

from funnel.runtime.config import ServerSettings, non_empty, non_negative, port_setting, positive, setting


@dataclass(frozen=True, kw_only=True)
class RankingSettings(ServerSettings):
    port: int = port_setting(50071)
    access_log: bool = setting(
        False,
        help="write one JSON log line per served call (off: the gateway logs every client request with its "
        "request id, and refused or failed calls are logged here anyway)",
    )
    artifact_dir: str = setting(
        help="artifact root; features come from the newest bundle under <dir>/bundles", checks=[non_empty]
    )
    triton_url: str = setting("127.0.0.1:8001", help="Triton gRPC address", checks=[non_empty])
    model_name: str = setting("ranker", help="model to call on Triton", checks=[non_empty])
    triton_max_batch: int = setting(
        1024, help="the model's max_batch_size; larger requests are split", checks=[positive]
    )
    max_candidates: int = setting(2000, help="largest candidate list a request may carry", checks=[positive])
    max_recent_items: int = setting(100, help="largest recent_item_ids list accepted", checks=[positive])
    triton_shared_memory: bool = setting(
        False,
        help="send the input tensors through Triton's system shared memory (Triton on this host: a sidecar "
        "in the pod, or loopback); falls back to the gRPC message when Triton refuses the region",
    )
    readiness_poll_seconds: float = setting(1.0, help="how often Triton model readiness is checked", checks=[positive])
    reload_poll_seconds: float = setting(
        5.0,
        help="how often to look for a newer bundle: its features are loaded beside the served ones, Triton loads "
        "the ranker version trained with it, then one reference swap (0 = never)",
        checks=[non_negative],
    )
    artifact_poll_seconds: float = setting(
        1.0, help="how often to look for a bundle while none is loaded", checks=[positive]
    )
