"""The benchmark report: a Markdown page with PNG plots, from the JSON results of `make bench`."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt
import numpy as np

STAGES = ("retrieval", "ranking", "reranking")
SUMMARY_RATES = (25, 50, 100, 200)
# CPU per request of the code before the lean request path (issue 15), measured the same way.
BEFORE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "before-lean-path.json"
# That code had no live state; its "demo" is this run's "demo, no live state". Every other
# scenario now also reads and records live state, so its difference from before includes that.
BEFORE_NAME = {"demo, no live state": "demo", "demo": ""}
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
        f"Poisson arrivals, {_step_length(results)} per rate, 10 results per request, 5% cold users. "
        f"SLO: p99 ≤ {slo:.0f} ms end to end with no errors.",
        "",
        "## Summary",
        "",
        f"| scenario | sustainable rate (p99 ≤ {slo:.0f} ms, no errors) | "
        + " | ".join(f"p50 / p99 at {rate:.0f} req/s (degraded)" for rate in SUMMARY_RATES)
        + " | gateway overhead p50 at 25 req/s | bare stack end to end p50 at 25 req/s |",
        "|---|---|" + "---|" * len(SUMMARY_RATES) + "---|---|",
    ]
    for s in scenarios:
        cells = []
        for rate in SUMMARY_RATES:
            step = next((x for x in s["steps"] if x["rate"] == rate), None)
            if step is None:
                cells.append("not run (saturated below)")
                continue
            x = step["summary"]
            errors = f", {x['errors']} errors" if x["errors"] else ""
            cells.append(f"{_fmt(x['p50_ms'])} / {_fmt(x['p99_ms'])} ms ({x['degraded_rate']:.1%}{errors})")
        first = next((x for x in s["steps"] if x["rate"] == 25), None)
        overhead = _fmt(first["summary"]["overhead_p50_ms"]) + " ms" if first else "-"
        bare = s.get("floor", {}).get("latency")
        bare_cell = f"{bare['p50_ms']:.1f} ms" if bare else "-"
        lines.append(f"| {s['scenario']['name']} | {s['sustainable_rps']:.0f} req/s | " + " | ".join(cells)
                     + f" | {overhead} | {bare_cell} |")  # fmt: skip
    lines += [
        "",
        "Gateway overhead = end-to-end latency minus the sum of the stage servers' own times (each stage reports "
        "its time in the `x-server-ms` trailer): the client's and the gateway's work plus the three hops' "
        "transport and (de)serialisation. *Bare stack end to end*: the same calls with the same bytes through "
        "stand-ins that answer at once (the floor below), at the same rate: the overhead a funnel of this shape "
        "has here when its stages take no time. In the breakdown, *wire and stage queues* is the gateway's wait for "
        "each stage minus that stage's own handler time: the hops themselves, and the time a call waits for the "
        "stage process's CPU before its handler starts (under load, mostly that).",
        "",
        *cpu_lines(results),
        *wide_lines(scenarios),
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
            "| offered req/s | answered/s | p50 | p90 | p99 | p99.9 ms | errors | degraded | why degraded | "
            "overhead p50 |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for step in s["steps"]:
            x = step["summary"]
            errors = ", ".join(f"{code} {n}" for code, n in step["errors"].items()) or "0"
            lines.append(
                f"| {x['rate']:.0f} | {x['throughput_rps']:.1f} | {_fmt(x['p50_ms'])} | {_fmt(x['p90_ms'])} | "
                f"{_fmt(x['p99_ms'])} | {_fmt(x['p99.9_ms'])} | {errors} | {x['degraded_rate']:.1%} | "
                f"{_causes(step)} | {_fmt(x['overhead_p50_ms'])} |"
            )
        lines.append("")
    lines += ["![latency CDF](latency_cdf.png)", ""]
    profile = scenarios[0].get("profile")
    if profile:
        lines += [f"## Profile of the process spending the most CPU per request: {profile.get('process')}", ""]
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


def cpu_lines(results: dict) -> list[str]:
    """CPU per answered request per process: before this code (stored), now, and the bare floor."""
    before = json.loads(BEFORE.read_text()) if BEFORE.exists() else {}
    rate = results.get("cpu_rate", 50)
    lines = [
        f"## CPU per answered request ({rate:.0f} req/s, open loop)",
        "",
        "Milliseconds of CPU each process spent per answered request (user + system, from `/proc`; Triton's "
        "row includes its python-backend stub; the load generator is not counted). *Floor*: the same hops done "
        "bare in the same run: a grpc.aio process per stage that answers raw bytes without parsing them, making "
        "the same calls with as many bytes each way as this scenario's requests carry (`benchmarks/grpc_floor.py`). "
        f"*Before*: the same measurement of the code before the lean request path ({before.get('commit', '-')}, "
        f"stored in `{BEFORE.relative_to(BEFORE.parents[2])}`), which had no live state: it is compared with "
        "*demo, no live state*; the other scenarios read and record live state (Redis on every request, its "
        "CPU in the `redis` row), which their before did not. Their floor then includes one Redis read of the "
        "live-state read's size per request.",
        "",
    ]
    for s in results["scenarios"]:
        cpu, floor = s.get("cpu_per_request"), s.get("floor")
        if not cpu or not floor:
            continue
        name = s["scenario"]["name"]
        old = before.get("scenarios", {}).get(BEFORE_NAME.get(name, name), {}).get("ms", {})
        bare = _floor_by_process(floor["ms"], cpu["ms"])
        lines += [
            f"### {s['scenario']['name']}",
            "",
            "| process | before | now | floor | now / floor |",
            "|---|---|---|---|---|",
        ]
        for name, ms in cpu["ms"].items():
            times = f"{ms / bare[name]:.1f}x" if bare.get(name) else "-"
            lines.append(f"| {name} | {_ms(old.get(name))} | {ms:.2f} | {_ms(bare.get(name))} | {times} |")
        was_total = sum(old.values()) if old else None
        ratio = cpu["total_ms"] / floor["total_ms"]
        lines += [
            f"| **total** | **{_ms(was_total)}** | **{cpu['total_ms']:.2f}** | **{floor['total_ms']:.2f}** | "
            f"**{ratio:.2f}x** |",
            "",
            f"Bytes per request on each hop (to, from): {s.get('payload_bytes')}. At {cpu['total_ms']:.1f} ms of "
            f"CPU per request (+ {cpu['load_generator_ms']:.1f} ms for the load generator) these cores answer at most "
            f"about {cpu['capacity_rps']:.0f} requests per second.",
            "",
        ]
    return lines


def _floor_by_process(floor: dict[str, float], processes: dict[str, float]) -> dict[str, float]:
    """The stand-in of each real process (a shard's replicas share their shard's stand-in name)."""
    matched = {}
    for name in processes:
        key = name if name in floor else name.rsplit("-", 1)[0] if name.startswith("retrieval-") else name
        key = key if key in floor else key.rsplit("-", 1)[0]
        if key in floor:
            matched[name] = floor[key]
    return matched


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def wide_lines(scenarios: list[dict]) -> list[str]:
    rows = [s for s in scenarios if s.get("wide_requests")]
    if not rows:
        return []
    lines = [
        "## The widest requests: 100 results, 8 clients at once, otherwise idle",
        "",
        "| scenario | answered | degraded | p50 | p99 | why (stage: cause, answers) |",
        "|---|---|---|---|---|---|",
    ]
    for s in rows:
        w = s["wide_requests"]
        lines.append(f"| {s['scenario']['name']} | {w['answered']} | {w['degraded']} | {w['p50_ms']:.1f} ms | "
                     f"{w['p99_ms']:.1f} ms | {_causes(w)} |")  # fmt: skip
    return [*lines, ""]


def _causes(record: dict) -> str:
    """'stage: cause n, ...' of a step or the widest requests; results of older runs have none."""
    causes = record.get("causes")
    return "not recorded" if causes is None else ", ".join(f"{cause} {n}" for cause, n in causes.items()) or "-"


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


def _step_length(results: dict) -> str:
    """Results written before steps had a floor on their requests say only the seconds."""
    seconds = f"{results['seconds_per_step']:.0f} s"
    fewest = results.get("min_requests_per_step", 0)
    return f"{seconds} and at least {fewest:,} requests" if fewest else seconds


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
