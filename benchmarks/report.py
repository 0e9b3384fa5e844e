"""The benchmark report: a Markdown page with PNG plots, from the JSON results of `make bench`."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt
import numpy as np

STAGES = ("retrieval", "ranking", "reranking")
PARTS = ("retrieval server", "ranking server", "reranking server", "wire and stage queues", "gateway and client")


def breakdown(step: dict) -> dict[str, float]:
    """Median milliseconds of each part of a request's time (the parts sum to the median request)."""
    e2e = np.asarray(step["e2e_ms"])
    calls = {s: np.asarray(step["stage_ms"][s]) for s in STAGES}
    servers = {s: np.asarray(step["server_ms"][s]) for s in STAGES}
    transport = sum(calls[s] - servers[s] for s in STAGES)
    local = e2e - sum(calls.values())
    parts = [servers["retrieval"], servers["ranking"], servers["reranking"], transport, local]
    return {name: round(float(np.median(values)), 2) for name, values in zip(PARTS, parts, strict=True)}


def step_at(scenario: dict, rate: float) -> dict | None:
    """The step at `rate`, else the highest step below it."""
    below = [s for s in scenario["steps"] if s["rate"] <= rate]
    return below[-1] if below else None


def plot_cdf(scenario: dict, slo: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for step in scenario["steps"]:
        values = np.sort(step["e2e_ms"])
        if len(values):
            ax.plot(values, np.arange(1, len(values) + 1) / len(values), label=f"{step['rate']:.0f} req/s")
    ax.axvline(slo, color="grey", linestyle="--", label=f"SLO {slo:.0f} ms (p99)")
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (ms, log scale)")
    ax.set_ylabel("share of requests")
    ax.set_title(f"Latency CDF, scenario '{scenario['scenario']['name']}'")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rates(results: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for n, scenario in enumerate(results["scenarios"]):
        rates = [s["rate"] for s in scenario["steps"]]
        color = f"C{n}"
        ax.plot(rates, [s["summary"]["p99_ms"] for s in scenario["steps"]], "o-", color=color,
                label=f"{scenario['scenario']['name']} p99")  # fmt: skip
        ax.plot(rates, [s["summary"]["p50_ms"] for s in scenario["steps"]], "x:", color=color)
    ax.axhline(results["slo_ms"], color="grey", linestyle="--", label="SLO")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (req/s, Poisson)")
    ax.set_ylabel("latency (ms; solid p99, dotted p50)")
    ax.set_title("Latency against rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_breakdown(rows: list[tuple[str, dict[str, float]]], rate: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 0.6 * len(rows) + 1.8))
    left = np.zeros(len(rows))
    for n, part in enumerate(PARTS):
        values = np.array([parts[part] for _, parts in rows])
        ax.barh([name for name, _ in rows], values, left=left, color=f"C{n}", label=part)
        left += values
    ax.set_xlabel(f"median milliseconds per request at {rate:.0f} req/s")
    ax.set_title("Where the time goes")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value: float) -> str:
    return "-" if value != value else f"{value:.1f}"  # NaN -> "-"


def write_report(results: dict, out: Path, reference_rate: float = 100.0) -> Path:
    slo = results["slo_ms"]
    scenarios = results["scenarios"]
    plot_cdf(scenarios[0], slo, out / "latency_cdf.png")
    plot_rates(results, out / "latency_vs_rate.png")
    rows = [
        (f"{s['scenario']['name']} ({step['rate']:.0f}/s)", breakdown(step))
        for s in scenarios
        if (step := step_at(s, reference_rate))
    ]
    plot_breakdown(rows, reference_rate, out / "stage_breakdown.png")

    m = results["machine"]
    lines = [
        "# Funnel end-to-end benchmark",
        "",
        f"Machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}. **Every process is co-located on these "
        "cores**: Triton, each shard and stage replica, the gateway, and the load generator itself. Open-loop "
        f"Poisson arrivals, {results['seconds_per_step']:.0f} s per rate, 10 results per request, 5% cold users. "
        f"SLO: p99 ≤ {slo:.0f} ms end to end with no errors.",
        "",
        "## Summary",
        "",
        f"| scenario | sustainable rate (p99 ≤ {slo:.0f} ms, no errors) | p50 / p99 at {reference_rate:.0f} req/s "
        "| errors, degraded there | overhead p50 |",
        "|---|---|---|---|---|",
    ]
    for s in scenarios:
        step = step_at(s, reference_rate)
        if step is None:
            continue
        summary = step["summary"]
        lines.append(
            f"| {s['scenario']['name']} | {s['sustainable_rps']:.0f} req/s | {_fmt(summary['p50_ms'])} / "
            f"{_fmt(summary['p99_ms'])} ms ({step['rate']:.0f} req/s) | {summary['errors']}, "
            f"{summary['degraded_rate']:.1%} | {_fmt(summary['overhead_p50_ms'])} ms |"
        )
    lines += [
        "",
        "Overhead = end-to-end latency minus the sum of the stage servers' own times (each stage reports its "
        "time in the `x-server-ms` trailer): the client's and the gateway's work plus the three hops' transport "
        "and (de)serialisation. In the breakdown, *wire and stage queues* is the gateway's wait for each stage "
        "minus that stage's own handler time: the hops themselves, and the time a call waits for the stage "
        "process's CPU before its handler starts (under load, mostly that).",
        "",
        *floor_lines(results.get("grpc_hop_floor")),
        "![latency against rate](latency_vs_rate.png)",
        "",
        f"## Where the time goes (medians at {reference_rate:.0f} req/s, or the highest rate below it)",
        "",
        "| scenario | " + " | ".join(PARTS) + " |",
        "|---|" + "---|" * len(PARTS),
    ]
    lines += [f"| {name} | " + " | ".join(f"{parts[p]:.2f}" for p in PARTS) + " |" for name, parts in rows]
    lines += ["", "![stage breakdown](stage_breakdown.png)", "", "## Every step", ""]
    for s in scenarios:
        lines += [
            f"### {s['scenario']['name']}",
            "",
            "| offered req/s | answered/s | p50 | p90 | p99 | p99.9 ms | errors | degraded | overhead p50 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for step in s["steps"]:
            x = step["summary"]
            errors = ", ".join(f"{code} {n}" for code, n in step["errors"].items()) or "0"
            lines.append(
                f"| {x['rate']:.0f} | {x['throughput_rps']:.1f} | {_fmt(x['p50_ms'])} | {_fmt(x['p90_ms'])} | "
                f"{_fmt(x['p99_ms'])} | {_fmt(x['p99.9_ms'])} | {errors} | {x['degraded_rate']:.1%} | "
                f"{_fmt(x['overhead_p50_ms'])} |"
            )
        lines.append("")
    lines += ["![latency CDF](latency_cdf.png)", ""]
    cpu = scenarios[0].get("cpu_per_request")
    if cpu:
        lines += [
            f"## CPU per request (scenario '{scenarios[0]['scenario']['name']}', {cpu['rate']:.0f} req/s)",
            "",
            "| process (Triton's row includes its python-backend stub) | ms of CPU per answered request |",
            "|---|---|",
            *[f"| {name} | {ms:.2f} |" for name, ms in cpu["ms"].items()],
            f"| **total** | **{cpu['total_ms']:.2f}** |",
            "",
            f"At {cpu['total_ms']:.1f} ms of CPU per request, these cores can answer at most about "
            f"{cpu['capacity_rps']:.0f} requests per second, before any queueing.",
            "",
        ]
    profile = scenarios[0].get("profile")
    if profile:
        lines += [f"## Profile of the slowest stage: {profile.get('stage')} ({profile.get('process')})", ""]
        if "error" in profile:
            lines += [f"Not taken: {profile['error']}", ""]
        else:
            lines += [
                f"py-spy, 200 Hz, {profile['samples']} samples while busy (idle excluded) at "
                f"{reference_rate:.0f} req/s. Own time is spent in the function itself; inclusive counts callees.",
                "",
                "| own % | function |",
                "|---|---|",
                *[f"| {share} | `{frame}` |" for frame, share in profile["own"]],
                "",
                "| inclusive % | function |",
                "|---|---|",
                *[f"| {share} | `{frame}` |" for frame, share in profile["inclusive"]],
                "",
            ]
    full = out / "full_ranking.json"
    if full.exists():
        lines += full_ranking_section(json.loads(full.read_text()))
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def floor_lines(floor: dict | None) -> list[str]:
    if not floor:
        return []
    least = floor["p50_ms_0_candidates"] + 3 * floor["p50_ms_360_candidates"]
    return [
        f"The floor under it, measured in the same run (`benchmarks/grpc_floor.py`): one bare Python grpc.aio "
        f"round trip between two processes takes {floor['p50_ms_0_candidates']:.2f} ms at p50 empty and "
        f"{floor['p50_ms_360_candidates']:.2f} ms carrying 360 candidates. A request makes four hops (client to "
        f"gateway, gateway to each stage, three of them carrying the candidate list), so about {least:.1f} ms of "
        "overhead is there before the gateway does any work of its own.",
        "",
    ]


def full_ranking_section(results: dict) -> list[str]:
    lines = [
        "## The funnel against ranking every item",
        "",
        "Held-out users, each asking for 100 items; the same hard filters for every method (content policy "
        "for the user's country, items already consumed). Quality on each user's held-out interactions.",
        "",
        "| items | users | method | NDCG@10 | Recall@10 | Recall@100 | latency p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in results["sizes"]:
        for method in size["methods"]:
            lines.append(
                f"| {size['items']:,} | {method['users']} | {method['name']} | {method['ndcg@10']:.4f} | "
                f"{method['recall@10']:.4f} | {method.get('recall@100', float('nan')):.4f} | "
                f"{method['p50_ms']:.1f} | {method['p99_ms']:.1f} |"
            )
    lines += [
        "",
        "Full ranking's quality is the same whichever way it runs (same model, same features); it runs on a "
        "subset of the users because it is slow. Quality ratios are paired: the funnel on exactly the users "
        "full ranking ran for, with a 95% bootstrap interval over users.",
        "",
        "| items | funnel | paired users | funnel / full ranking NDCG@10 | Recall@100 | "
        "full ranking / funnel latency (p50): in-process | served |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in results["sizes"]:
        for ratio in size["ratios"]:
            lines.append(
                f"| {size['items']:,} | {ratio['funnel']} | {ratio['paired_users']} | "
                f"{_interval(ratio['quality_ndcg@10'])} | {_interval(ratio['quality_recall@100'])} | "
                f"{ratio['speedup_in_process']:.0f} times | {ratio['speedup_served']:.0f} times |"
            )
    return [*lines, ""]


def _interval(ratio: dict | None) -> str:
    if not ratio or ratio["ratio"] != ratio["ratio"]:
        return "n/a (full ranking found no held-out item)"
    return f"{ratio['ratio']:.0%} [{ratio['low']:.0%}, {ratio['high']:.0%}]"


def main(argv: list[str] | None = None) -> int:
    """Rewrite the report of a results folder (after full_ranking.json joins results.json)."""
    import sys

    out = Path((argv if argv is not None else sys.argv[1:] or ["results/bench"])[0])
    path = write_report(json.loads((out / "results.json").read_text()), out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
