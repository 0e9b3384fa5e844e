"""Settings come from flags, then FUNNEL_* variables, then defaults, and are validated up front."""

from __future__ import annotations

import pytest

from funnel.runtime.config import ServerSettings, load_settings
from funnel.runtime.errors import ConfigError
from services.gateway.settings import GatewaySettings
from services.retrieval.settings import RetrievalSettings


def test_flags_override_environment_which_overrides_defaults():
    env = {"FUNNEL_PORT": "6000", "FUNNEL_LOG_LEVEL": "DEBUG"}
    settings = load_settings(ServerSettings, ["--port", "7000"], env)
    assert settings.port == 7000
    assert settings.log_level == "DEBUG"
    assert settings.grace_seconds == ServerSettings().grace_seconds


def test_booleans_and_numbers_are_parsed_and_bad_values_named():
    assert load_settings(ServerSettings, ["--access-log", "false"], {}).access_log is False
    with pytest.raises(ConfigError, match=r"port: --port='abc' is invalid"):
        load_settings(ServerSettings, ["--port", "abc"], {})
    with pytest.raises(ConfigError, match=r"access_log: FUNNEL_ACCESS_LOG='maybe' is invalid"):
        load_settings(ServerSettings, [], {"FUNNEL_ACCESS_LOG": "maybe"})


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as error:
        load_settings(ServerSettings, ["--port", "-1", "--log-level", "LOUD", "--worker-threads", "0"], {})
    message = str(error.value)
    assert "port=-1 must be a port number" in message
    assert "log_level='LOUD' must be one of" in message
    assert "worker_threads=0 must be > 0" in message


def test_required_settings_name_their_flag_and_variable():
    with pytest.raises(ConfigError, match=r"artifact_dir: required \(set --artifact-dir or FUNNEL_ARTIFACT_DIR\)"):
        load_settings(RetrievalSettings, [], {})


def test_gateway_reads_shards_and_replicas_from_one_string():
    settings = load_settings(
        GatewaySettings,
        [
            "--retrieval-shards", "127.0.0.1:1,127.0.0.1:2; dns:///retrieval-1:50061",
            "--ranking-target", "127.0.0.1:3", "--reranking-target", "127.0.0.1:4", "--artifact-dir", "a",
        ],
        {},
    )  # fmt: skip
    assert settings.shard_targets() == ["127.0.0.1:1,127.0.0.1:2", "dns:///retrieval-1:50061"]


def test_gateway_rejects_a_reserve_larger_than_the_whole_budget():
    with pytest.raises(ConfigError, match="local_reserve_ms must be smaller"):
        load_settings(
            GatewaySettings,
            ["--local-reserve-ms", "500", "--default-deadline-ms", "100"],
            {"FUNNEL_RETRIEVAL_SHARDS": "a:1", "FUNNEL_RANKING_TARGET": "b:1", "FUNNEL_RERANKING_TARGET": "c:1",
             "FUNNEL_ARTIFACT_DIR": "x"},
        )  # fmt: skip
