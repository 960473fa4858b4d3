"""Pareto plots for `recipe compare`: accuracy against cost, the stages no other stage beats highlighted.

Uses matplotlib's Figure directly (no pyplot), so no GUI backend is ever chosen on a headless machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# (x column, axis label); the latency panel appears only when some stage logged that latency
COSTS = [
    ("macs", "MACs"),
    ("latency_ms", "PyTorch latency (ms, CPU, batch 1)"),
    ("onnx_latency_ms", "ONNX Runtime latency (ms, 1 thread, batch 1)"),
]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (lower or equal cost AND higher or equal metric, one
    strictly), sorted by cost: the stages worth keeping when accuracy and cost both matter."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(ox <= x and oy >= y and (ox < x or oy > y) for j, (ox, oy) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def plot_comparison(rows: list[dict[str, Any]], path: Path) -> Path:
    """One panel per (primary metric, cost) pair that has data; one colour per recipe run; the front joined."""
    from matplotlib.figure import Figure

    metrics = sorted({r["metric"] for r in rows if r["metric"] and r["value"] is not None})
    panels = [
        (m, cost, label)
        for m in metrics
        for cost, label in COSTS
        if any(r["metric"] == m and r.get(cost) is not None and r["value"] is not None for r in rows)
    ]
    figure = Figure(figsize=(6.5 * max(1, len(panels)), 5), layout="constrained")
    axes = figure.subplots(1, max(1, len(panels)), squeeze=False)[0]
    if not panels:
        axes[0].text(0.5, 0.5, "no stage logged a metric with MACs or latency", ha="center", va="center")
        axes[0].set_axis_off()
    runs = list(dict.fromkeys(r["recipe_run"] for r in rows))
    colours = {run: f"C{i % 10}" for i, run in enumerate(runs)}
    for ax, (metric, cost, label) in zip(axes, panels):
        shown = [r for r in rows if r["metric"] == metric and r.get(cost) is not None and r["value"] is not None]
        points = [(float(r[cost]), float(r["value"])) for r in shown]
        for run in runs:
            mine = [(p, r) for p, r in zip(points, shown) if r["recipe_run"] == run]
            if mine:
                name = f"{mine[0][1]['recipe']} ({run[:8]})"
                ax.scatter([p[0] for p, _ in mine], [p[1] for p, _ in mine], color=colours[run], label=name, zorder=2)
        front = pareto_front(points)
        ax.plot(
            [points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=1, zorder=1, label="Pareto front"
        )
        ax.scatter(
            [points[i][0] for i in front],
            [points[i][1] for i in front],
            s=160,
            facecolors="none",
            edgecolors="k",
            zorder=3,
        )
        labels: dict[tuple[float, float], list[str]] = {}
        for point, r in zip(
            points, shown
        ):  # stages on one point (a fine-tune that kept its parent's top1) share a label
            labels.setdefault(point, []).append(r["node_id"])
        for point, names in labels.items():
            ax.annotate("\n".join(dict.fromkeys(names)), point, textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} vs {cost}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
