"""Benchmarks against the offline model on loopback: what the pool and the manager buy.

Every comparison runs both sides in this one process, interleaved, and reports
median, p95 and the ratio. Prints the figures tables, writes bench/results/latest.json
and latest.md, draws bench/results/latest.png, and puts the same tables in
docs/benchmarks.md between its figures markers.

    python bench/run.py [--quick] [--cluster | --approval | --keys | --tools | --memory]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markdown import Markdown

import approval_scenarios as approval
import cluster_scenarios as cluster
import keys_scenarios as keys
import scenarios
import tool_rounds
import workload
from claude_sessions.observability.logs import configure_logging
from claude_sessions.offline_model import OfflineModel
from common import Comparison, offline_environment

RESULTS = Path(__file__).parent / "results"
#: The documentation page whose figures section each run (not a cluster-only one) replaces.
DOCS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
FIGURES_START, FIGURES_END = "<!-- figures:start -->", "<!-- figures:end -->"


async def run_approval(quick: bool) -> dict[str, Any]:
    """Only the tool-approval benchmark: its comparison rows and its table."""
    approved, approval_steps = await approval.tool_approval(10 if quick else 30)
    return {"comparisons": [c.as_dict() for c in approved], "approval": approval_steps}


async def run_keys(quick: bool) -> dict[str, Any]:
    """Only the run-time keys benchmark: authentication's cost, in process and over HTTP."""
    return {"keys": await keys.run_all(quick)}


async def run_tools(quick: bool, model: OfflineModel) -> dict[str, Any]:
    """Only OpenAI function calling's tool rounds: a continuation's model calls and time, vs a plain follow-up."""
    return {"tools": await tool_rounds.run_all(quick, model)}


async def run_all(quick: bool, model: OfflineModel, only_cluster: bool) -> dict[str, Any]:
    why_not = await cluster.reachable()
    clustered = await cluster.run_all(quick) if why_not is None else {"skipped": why_not}
    if only_cluster:
        return {"cluster": clustered}
    rounds = 5 if quick else 15
    comparisons: list[Comparison] = []
    comparisons += await scenarios.session_start(rounds)
    comparisons.append(await scenarios.manager_overhead(10 if quick else 150))
    comparisons.append(await scenarios.http_overhead(rounds))
    comparisons.append(await scenarios.first_text(rounds, model))
    comparisons += await scenarios.gateway_overhead(100 if quick else 500)
    comparisons += await scenarios.openai_completions(rounds, model)
    comparisons += await scenarios.limits_cost(5 if quick else 20)
    approved, approval_steps = await approval.tool_approval(10 if quick else 30)
    comparisons += approved
    return {
        "comparisons": [c.as_dict() for c in comparisons],
        "approval": approval_steps,
        "keys": await keys.run_all(quick),
        "tools": await tool_rounds.run_all(quick, model),
        "concurrency": await scenarios.concurrency([1, 10] if quick else [1, 10, 50], 10),
        "memory": await scenarios.memory([10] if quick else [10, 50]),
        "maintenance": await scenarios.maintenance_cost([1_000] if quick else [1_000, 10_000, 100_000]),
        "workload": await workload.for_bench(),  # the short profile, quick or not
        "cluster": clustered,
    }


def machine() -> str:
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"claude-agent-sdk {__import__('claude_agent_sdk').__version__}"
    )


def comparison_lines(comparisons: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| comparison (median / p95 ms) | baseline | claude-sessions | ratio | target |",
        "|---|---|---|---|---|",
    ]
    for c in comparisons:
        b, o = c["baseline"], c["ours"]
        lines.append(
            f"| {c['name']} | {c['baseline_label']}: {b['median_ms']:.1f} / {b['p95_ms']:.1f} "
            f"| {c['ours_label']}: {o['median_ms']:.1f} / {o['p95_ms']:.1f} | {c['ratio']:.3f} | {c['target']} |"
        )
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The figures tables, from one run."""
    lines = comparison_lines(results["comparisons"]) if "comparisons" in results else []
    if "approval" in results:
        lines += ["", *approval.markdown(results["approval"])]
    if "keys" in results:
        lines += ["", *keys.markdown(results["keys"])]
    if "tools" in results:
        lines += ["", *tool_rounds.markdown(results["tools"])]
    if "cluster" not in results:  # a tool-approval-only, keys-only, tools-only or memory-only run
        if "memory" in results:
            lines += ["", *memory_lines(results["memory"])]
        return "\n".join(lines).strip() + "\n"
    clustered = results["cluster"]
    cluster_lines = [f"Cluster benchmarks skipped: {clustered['skipped']}"] if "skipped" in clustered else []
    cluster_lines = cluster_lines or cluster.markdown(clustered)
    if "comparisons" not in results:
        return "\n".join(cluster_lines) + "\n"
    lines += [
        "",
        "| concurrent sessions x 10 turns (each side twice) | bare SDK turns/s (p95 ms) "
        "| claude-sessions turns/s (p95 ms) | throughput ratio (target >= 0.95) |",
        "|---|---|---|---|",
    ]
    for r in results["concurrency"]:
        lines.append(
            f"| {r['sessions']} | {r['bare_turns_per_s']:.1f} ({r['bare_p95_ms']:.0f}) "
            f"| {r['ours_turns_per_s']:.1f} ({r['ours_p95_ms']:.0f}) | {r['throughput_ratio']:.3f} |"
        )
    lines += ["", *memory_lines(results["memory"])]
    lines += ["", "| registered sessions (no processes) | maintenance pass, median of 5 | slowest |", "|---|---|---|"]
    for r in results["maintenance"]:
        lines.append(f"| {r['sessions']:,} | {r['pass_ms']:.1f} ms | {r['slowest_pass_ms']:.1f} ms |")
    if "workload" in results:
        lines += ["", *workload.markdown(results["workload"])]
    return "\n".join([*lines, "", *cluster_lines]) + "\n"


def memory_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The memory table: PSS totals (they add up across processes), a live CLI's unique and shared parts."""
    lines = [
        "| sessions | live, PSS: process + CLIs | a live CLI: unique (USS) + shared (RSS - USS) "
        "| idle (workers released), PSS | turn, live session | first turn after release |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sessions']} | {r['live_pss_mb']:.0f} MB ({r['live_pss_per_session_mb']:.0f} MB each) "
            f"| {r['cli_uss_mb']:.0f} MB + {r['cli_shared_mb']:.0f} MB shared "
            f"| {r['idle_pss_mb']:.0f} MB (~{r['idle_pss_per_session_kb']:.0f} KB each) "
            f"| {r['live_turn']['median_ms']:.0f} ms | {r['first_turn_after_release']['median_ms']:.0f} ms |"
        )
    return lines


def figures_section(results: dict[str, Any], quick: bool) -> str:
    """What goes between the documentation page's figures markers: when and where, then the tables."""
    mode = " (--quick: fewer rounds and levels)" if quick else ""
    run = f"Latest run{mode}: {results['when']}, {results['machine']}, {results['seconds']:.0f} s."
    return f"{run}\n\n{markdown(results)}"


def replace_figures(page: Path, section: str) -> bool:
    """Replace what lies between ``page``'s figures markers with ``section``; False if it has none."""
    text = page.read_text() if page.exists() else ""
    start = text.find(FIGURES_START)
    end = text.find(FIGURES_END, start + len(FIGURES_START)) if start >= 0 else -1
    if end < 0:
        return False
    page.write_text(f"{text[: start + len(FIGURES_START)]}\n{section.strip()}\n{text[end:]}")
    return True


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Comparisons across the top, one row each (their names are long, their medians span
    # three orders of magnitude: a log axis); throughput and memory side by side below.
    fig = plt.figure(figsize=(14, 10))
    grid = fig.add_gridspec(2, 2, height_ratios=[1.5, 1])
    axes = [fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])]

    def pairs(
        ax: Any, title: str, labels: list[str], left: tuple[str, list[float]], right: tuple[str, list[float]]
    ) -> None:
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], left[1], 0.4, label=left[0])
        ax.bar([i + 0.2 for i in x], right[1], 0.4, label=right[0])
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.legend()
        ax.set_title(title)

    comparisons = results["comparisons"]
    y = range(len(comparisons))
    axes[0].barh([i - 0.2 for i in y], [c["baseline"]["median_ms"] for c in comparisons], 0.4, label="baseline")
    axes[0].barh([i + 0.2 for i in y], [c["ours"]["median_ms"] for c in comparisons], 0.4, label="claude-sessions")
    axes[0].set_yticks(list(y), [c["name"] for c in comparisons], fontsize=8)
    axes[0].invert_yaxis()
    axes[0].set_xscale("log")
    axes[0].legend(loc="center right")
    axes[0].set_title("Comparisons (median ms, log scale)")
    conc = results["concurrency"]
    pairs(
        axes[1],
        "Throughput (turns/s) by concurrent sessions",
        [str(r["sessions"]) for r in conc],
        ("bare SDK", [r["bare_turns_per_s"] for r in conc]),
        ("claude-sessions", [r["ours_turns_per_s"] for r in conc]),
    )
    mem = results["memory"]
    pairs(
        axes[2],
        "PSS MB (process + CLIs) by sessions",
        [str(r["sessions"]) for r in mem],
        ("live sessions", [r["live_pss_mb"] for r in mem]),
        ("idle (released)", [r["idle_pss_mb"] for r in mem]),
    )
    fig.suptitle(f"claude-sessions benchmarks — {results['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and levels (about a minute)")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--cluster", action="store_true", help="only the cluster benchmarks (needs PostgreSQL)")
    only.add_argument("--approval", action="store_true", help="only tool approval: prints its figures, writes nothing")
    only.add_argument("--keys", action="store_true", help="only run-time keys' auth cost: prints, writes nothing")
    only.add_argument("--tools", action="store_true", help="only OpenAI tool rounds: prints, writes nothing")
    only.add_argument("--memory", action="store_true", help="only memory, live vs released: prints, writes nothing")
    args = parser.parse_args()
    configure_logging("WARNING")
    console = Console(width=140)
    began = time.monotonic()
    with offline_environment() as server:
        if args.approval:
            results = asyncio.run(run_approval(args.quick))
        elif args.keys:
            results = asyncio.run(run_keys(args.quick))
        elif args.tools:
            results = asyncio.run(run_tools(args.quick, server.model))
        elif args.memory:
            results = {"memory": asyncio.run(scenarios.memory([10] if args.quick else [10, 50]))}
        else:
            results = asyncio.run(run_all(args.quick, server.model, args.cluster))
    results["machine"] = machine()
    results["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["seconds"] = round(time.monotonic() - began, 1)
    console.print(Markdown(markdown(results)))
    if args.approval or args.keys or args.tools or args.memory:
        print(markdown(results))  # as is, for docs/benchmarks.md
        console.print(f"{results['machine']}; {results['seconds']} s; nothing written")
        return
    RESULTS.mkdir(exist_ok=True)
    name = "cluster" if args.cluster else "latest"  # a cluster-only run keeps the full run's figures
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(results))
    if not args.cluster:
        chart(results, RESULTS / "latest.png")
        if not replace_figures(DOCS_PAGE, figures_section(results, args.quick)):
            console.print(f"{DOCS_PAGE} has no {FIGURES_START} ... {FIGURES_END} section: not updated")
    console.print(f"{results['machine']}; {results['seconds']} s; written to {RESULTS}/{name}.*")


if __name__ == "__main__":
    main()
