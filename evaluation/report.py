"""The replay's Markdown report and plot: every variant's metrics, and the policy's trade-off."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt

# How each tie order of `training/dataset.py` reads in a report's protocol line.
TIES = {"hash": "ties within a second broken by a fixed hash", "file": "ties within a second in the file's order"}

ACCURACY = [
    ("recall@10", "R@10"), ("recall@50", "R@50"), ("recall@100", "R@100"), ("ndcg@10", "NDCG@10"),
    ("ndcg@100", "NDCG@100"),
]  # fmt: skip
HEADLINE = {"ndcg@10": "NDCG@10", "recall@100": "Recall@100"}
BEYOND = [
    ("coverage", "coverage"), ("ild", "ILD"), ("categories", "categories"), ("novelty", "novelty"),
    ("provider_gini", "provider Gini"), ("top1pct_provider_share", "top-1% share"),
]  # fmt: skip


def columns(k: int) -> list[tuple[str, str]]:
    return [*ACCURACY, *((f"{key}@{k}", f"{label}@{k}") for key, label in BEYOND)]


BASELINE = "filters only"
FULL_FUNNEL = "full funnel (served policy)"


def _cell(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _table(rows: list[dict], k: int) -> list[str]:
    cols = columns(k)
    lines = [
        "| variant | " + " | ".join(label for _, label in cols) + " | degraded |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for row in rows:
        m = row["metrics"]
        cells = " | ".join(_cell(m[key]) for key, _ in cols)
        lines.append(f"| {row['variant']} | {cells} | {m['degraded']} |")
    return lines


def _change(value: float, base: float) -> str:
    if base == 0:
        return "n/a (the baseline scores 0)"
    return f"{100 * (value - base) / base:+.1f}%"


def baseline_table(results: dict) -> list[str]:
    """The baselines beside the served variants, on the accuracy columns."""
    lines = ["| method | " + " | ".join(label for _, label in ACCURACY) + " |", "|---" * (len(ACCURACY) + 1) + "|"]
    for name, m in results["baselines"]["metrics"].items():
        lines.append(f"| {name} (baseline) | " + " | ".join(_cell(m[key]) for key, _ in ACCURACY) + " |")
    for row in results["variants"]:
        if row["kind"] == "stages":
            m = row["metrics"]
            cells = " | ".join(_cell(m[key]) for key, _ in ACCURACY)
            lines.append(f"| **{row['variant']}** (served) | {cells} |")
    return lines


def verdicts(results: dict) -> list[str]:
    """Plain statements: which baseline each served stage variant beats, on NDCG@10 and Recall@100."""
    lines = []
    for row in (r for r in results["variants"] if r["kind"] == "stages"):
        m = row["metrics"]
        parts = []
        for name, base in results["baselines"]["metrics"].items():
            said = []
            for key, label in HEADLINE.items():
                verb = "beats" if m[key] > base[key] else "does not beat"
                said.append(f"{verb} it on {label} ({_change(m[key], base[key])})")
            parts.append(f"{name}: " + ", ".join(said))
        lines.append(f"- **{row['variant']}** — " + "; ".join(parts) + ".")
    rows = {r["variant"]: r["metrics"] for r in results["variants"]}
    if "retrieval only" in rows and "retrieval + ranking" in rows:
        lines.append(
            f"- Ranking changes NDCG@10 over retrieval order by "
            f"{_change(rows['retrieval + ranking']['ndcg@10'], rows['retrieval only']['ndcg@10'])}."
        )
    if FULL_FUNNEL in rows and BASELINE in rows:
        lines.append(
            f"- The served policy changes NDCG@10 against filters only by "
            f"{_change(rows[FULL_FUNNEL]['ndcg@10'], rows[BASELINE]['ndcg@10'])}."
        )
    if FULL_FUNNEL in rows:
        m = rows[FULL_FUNNEL]
        share = m.get("content_policy_removed_share")
        if share is not None:
            lines.append(
                f"- Content policy removed {share:.2%} of the candidates re-ranking received (hard filters run "
                "inside retrieval's search)."
            )
        lines.append(f"- Served items the user had already interacted with: {m.get('served_consumed', 0)}.")
    return lines


def tradeoff(results: dict) -> list[dict]:
    """Each policy variant against filters only: accuracy lost, diversity and fairness gained."""
    rows = {row["variant"]: row["metrics"] for row in results["variants"]}
    base = rows.get(BASELINE)
    if base is None:
        return []
    out = []
    for row in results["variants"]:
        if row["kind"] == "stages" and row["stages"] != "retrieval,ranking,reranking":
            continue
        if row["variant"] == BASELINE:
            continue
        m = row["metrics"]
        out.append(
            {
                "variant": row["variant"],
                "ndcg@10 change %": 100 * (m["ndcg@10"] - base["ndcg@10"]) / base["ndcg@10"]
                if base["ndcg@10"]
                else 0.0,
                "recall@100 change %": (
                    100 * (m["recall@100"] - base["recall@100"]) / base["recall@100"] if base["recall@100"] else 0.0
                ),
                **{
                    name: sign * (m[f"{key}@{k}"] - base[f"{key}@{k}"])
                    for k in (10, 100)
                    for key, name, sign in (
                        ("categories", f"categories@{k} gained", 1),
                        ("ild", f"ILD@{k} gained", 1),
                        ("provider_gini", f"provider Gini@{k} lowered", -1),
                        ("top1pct_provider_share", f"top-1% share@{k} lowered", -1),
                    )
                },
            }
        )
    return out


def write_report(results: dict, out: Path, command: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    plot = out / "tradeoff.png"
    draw(results, plot)
    stage_rows = [r for r in results["variants"] if r["kind"] == "stages"]
    policy_rows = [r for r in results["variants"] if r["kind"] == "policy"]
    lines = [
        "# Replay evaluation of the served funnel",
        "",
        f"Bundle `{results['bundle']}` ({results['items']:,} items, {results['providers']:,} providers); "
        f"{results['replayed_users']:,} of {results['held_out_users']:,} held-out users (seed {results['seed']}), "
        "one request each through the gateway, 100 results asked. Accuracy on each user's held-out "
        "interactions. Coverage, intra-list distance (ILD, 1 - cosine of item embeddings), distinct "
        "categories, novelty (mean -log2 popularity share) and provider exposure (Gini over every provider, "
        "share of the top 1%) on the whole served list (@100, the list the policy's caps and quotas "
        "shape) and on its first 10 (the JSON has both for every variant).",
        "",
        f"Command: `{command}`",
        "",
        f"Protocol: each user's latest {results.get('protocol', {}).get('holdout', '?')} interactions held out "
        f"(time order, {TIES.get(results.get('protocol', {}).get('ties', 'hash'), 'ties in an unrecorded order')}); "
        "the full catalog minus the user's known items is ranked; "
        "baselines are fit on the same training split and scored on the same users.",
        "",
        "## Against the baselines",
        "",
        *baseline_table(results),
        "",
        *verdicts(results),
        *(f"- {note}" for note in results["baselines"]["notes"]),
        "",
        "## Stage ablations (served policy)",
        "",
        *_table(stage_rows, 100),
        "",
        "The same, first 10 of each list:",
        "",
        *_table(stage_rows, 10),
        "",
        "## Re-ranking rule groups (every stage on)",
        "",
        "Groups: " + "; ".join(f"**{g}** = {', '.join(r)}" for g, r in results["rule_groups"].items()) + ".",
        "",
        *_table(policy_rows, 100),
        "",
        "The same, first 10 of each list:",
        "",
        *_table(policy_rows, 10),
        "",
        "## What the policy trades (against filters only)",
        "",
    ]
    trade = tradeoff(results)
    if trade:
        keys = [k for k in trade[0] if k != "variant"]
        lines += ["| variant | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {t['variant']} | " + " | ".join(f"{t[k]:+.3f}" for k in keys) + " |" for t in trade]
        lines += ["", "Changes are absolute except the two accuracy columns (relative, %)."]
    lines += ["", f"![accuracy against diversity and provider concentration]({plot.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def draw(results: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    panels = [("categories@100", "distinct categories per list"), ("provider_gini@100", "provider exposure Gini")]
    for axis, (key, label) in zip(axes, panels, strict=True):
        points: dict[tuple[float, float], list[str]] = {}  # variants that coincide share one label
        for row in results["variants"]:
            m = row["metrics"]
            marker = "s" if row["kind"] == "stages" else "o"
            axis.scatter(m[key], m["ndcg@10"], marker=marker)
            points.setdefault((round(m[key], 6), round(m["ndcg@10"], 6)), []).append(row["variant"])
        for (x, y), names in points.items():
            axis.annotate(" = ".join(names), (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        axis.set_xlabel(label)
        axis.set_ylabel("NDCG@10")
        axis.grid(alpha=0.3)
    axes[0].set_title("accuracy against diversity (squares: stage ablations)")
    axes[1].set_title("accuracy against provider concentration")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
