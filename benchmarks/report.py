"""The benchmark's outputs: a plain table with ratios, and a throughput chart."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional

COLORS = {
    "pymc": "tab:blue",
    "pymc pure": "tab:cyan",
    "pymemcache": "tab:orange",
    "pylibmc": "tab:green",
    "emcache": "tab:red",
    "aiomcache": "tab:purple",
    "bare protocol": "tab:gray",
    "bare streams": "tab:brown",
}


@dataclass
class Result:
    case: str
    client: str
    ops_per_sec: float
    p50_us: float
    p99_us: float


def table(results: List[Result]) -> str:
    by_case: Dict[str, Dict[str, Result]] = {}
    for r in results:
        by_case.setdefault(r.case, {})[r.client] = r
    width = max([26, *(len(r.case) for r in results)])
    lines = [
        f"{'case':<{width}} {'client':<12} {'ops/s':>10} {'p50 us':>9} {'p99 us':>9}  pymc is",
        "-" * (width + 60),
    ]
    for case, rows in by_case.items():
        mine = rows.get("pymc")
        for client, r in rows.items():
            ratio = ""
            if mine is not None and client != "pymc":
                ratio = f"{mine.ops_per_sec / r.ops_per_sec:.2f}x {client}"
            lines.append(
                f"{case:<{width}} {client:<12} {r.ops_per_sec:>10,.0f} {r.p50_us:>9.1f} "
                f"{r.p99_us:>9.1f}  {ratio}"
            )
    return "\n".join(lines)


def chart(results: List[Result], path: str, title: str) -> Optional[str]:
    """Throughput against concurrency per client (threads, greenlets and asyncio tasks, the
    uvloop lines dashed); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    series: Dict[str, Dict[str, Dict[int, float]]] = {
        "threads": {},
        "threads, 4 nodes, all CPUs": {},
        "greenlets": {},
        "asyncio tasks": {},
    }
    titles = {
        "threads": "pooled get under threads",
        "threads, 4 nodes, all CPUs": "pooled HashClient.get, 4 nodes, all CPUs",
        "greenlets": "pooled get under greenlets",
        "asyncio tasks": "pooled get under asyncio tasks",
    }
    for r in results:
        if r.case.startswith("HashClient.get pooled x"):
            n = int(r.case.rsplit("x", 1)[1])
            series["threads, 4 nodes, all CPUs"].setdefault(r.client, {})[n] = r.ops_per_sec
        elif r.case.startswith("PooledClient.get"):
            m = re.search(r"x(\d+)$", r.case)
            series["threads"].setdefault(r.client, {})[int(m.group(1)) if m else 1] = r.ops_per_sec
        elif r.case.startswith("gevent get"):
            n = int(r.case.rsplit("x", 1)[1])
            series["greenlets"].setdefault(r.client, {})[n] = r.ops_per_sec
        elif re.match(r"(asyncio|uvloop) get x\d+$", r.case):
            loop, tasks = r.case.split(" get x")
            label = r.client + (" (uvloop)" if loop == "uvloop" else "")
            series["asyncio tasks"].setdefault(label, {})[int(tasks)] = r.ops_per_sec
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.2))
    for ax, (kind, clients) in zip(axes, series.items()):
        for client, points in sorted(clients.items()):
            xs = sorted(points)
            base = client.split(" (")[0]
            style = "--" if client.endswith("(uvloop)") else "-"
            ax.plot(xs, [points[x] for x in xs], style, marker="o", label=client,
                    color=COLORS.get(base))  # fmt: skip
        ax.set_xscale("log")
        ticks = sorted({x for points in clients.values() for x in points})
        if ticks:  # (the counts themselves, not powers of ten)
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set_xlabel(f"concurrent {kind.split(',')[0]}")
        ax.set_ylabel("get ops/s (all callers)")
        ax.set_title(titles[kind])
        ax.grid(True, alpha=0.3)
        if clients:  # (a run of selected cases may have none of this kind)
            ax.legend(fontsize="small")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
