"""Reading a process's Prometheus metrics page: what tests and benchmarks check a running stack by."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(metrics_port: int, host: str = "127.0.0.1") -> list[tuple[str, dict[str, str], float]]:
    """Every sample on the page: (name, labels, value)."""
    with urllib.request.urlopen(f"http://{host}:{metrics_port}/metrics", timeout=5) as page:
        text = page.read().decode()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        value
        for sample, have, value in samples
        if sample == name and all(have.get(key) == wanted for key, wanted in labels.items())
    )
