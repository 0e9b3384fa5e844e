"""`docs/configuration.md` is generated from the settings classes and can never drift from them."""

from __future__ import annotations

import dataclasses

from deploy.configuration import PROCESSES, REFERENCE, reference
from funnel.runtime.config import env_name, flag_name, setting
from services.gateway.settings import GatewaySettings


def test_the_committed_reference_is_what_the_settings_classes_generate():
    assert REFERENCE.read_text() == reference(), "docs/configuration.md is out of date: run `make docs`"


def test_every_setting_of_every_process_is_listed_under_it_or_under_every_process():
    text = reference()
    sections = {title.split(" (")[0]: body for title, _, body in (s.partition("\n") for s in text.split("\n## ")[1:])}
    for process, module, cls in PROCESSES:
        assert f"## {process} (`python -m {module}`)" in text
        for field in dataclasses.fields(cls):
            row = f"| `{flag_name(field.name)}` | `{env_name(field.name)}` |"
            assert row in sections[process] or row in sections["Every process"], f"{process}: {field.name}"


def test_a_setting_added_to_a_process_shows_up_with_its_default_and_help(monkeypatch):
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Extended(GatewaySettings):
        answer_cache_seconds: float = setting(2.5, help="how long an answer is reused | at most")

    processes = tuple((p, m, Extended if c is GatewaySettings else c) for p, m, c in PROCESSES)
    monkeypatch.setattr("deploy.configuration.PROCESSES", processes)
    row = "| `--answer-cache-seconds` | `FUNNEL_ANSWER_CACHE_SECONDS` | `2.5` |"
    assert f"{row} how long an answer is reused \\| at most |" in reference()
