"""The compare plots (PNG): accuracy against trainable parameters and training time with the Pareto
front, peak memory per method, learning curves. Matplotlib is imported only here, when plots are drawn.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from mcqtune.atomic import atomic_write_bytes
from mcqtune.compare.evidence import ZERO_SHOT, pareto_front
from mcqtune.compare.table import fmt_pct, is_scored

PLOT_FILES = ("accuracy_vs_params.png", "accuracy_vs_time.png", "peak_memory.png", "learning_curves.png")


def _colors(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {r["method"]: cmap(i % 10) for i, r in enumerate(rows)}


def _figure(width: float = 7.5, height: float = 4.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _reference_lines(ax, rows: list[dict[str, Any]]) -> None:
    zero = next((r for r in rows if r["method"] == ZERO_SHOT and is_scored(r)), None)
    baseline = next((r["majority_baseline"] for r in rows if is_scored(r)), None)
    if zero:
        ax.axhline(
            zero["accuracy"] * 100,
            color="0.35",
            ls="--",
            lw=1.2,
            label=f"zero-shot {fmt_pct(zero['accuracy'])}",
        )
        ax.axhspan(zero["ci95_low"] * 100, zero["ci95_high"] * 100, color="0.5", alpha=0.12, lw=0)
    if baseline is not None:
        ax.axhline(
            baseline * 100, color="tab:red", ls=":", lw=1.4, label=f"majority letter {fmt_pct(baseline)}"
        )


def _failed_note(ax, rows: list[dict[str, Any]]) -> None:
    failed = [r["method"] for r in rows if not is_scored(r)]
    if failed:
        ax.text(
            0.99,
            0.01,
            "failed, not plotted: " + ", ".join(failed),
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            color="tab:red",
        )


def _legend_outside(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:
        ax.text(0.5, 0.5, "no finished method to plot", transform=ax.transAxes, ha="center", color="0.4")


def _place_labels(fig, ax, labels: list[tuple[float, float, str]]) -> None:
    """Annotate points, moving a label to another side of its point when it would cover another label."""
    fig.canvas.draw()  # final limits, so label boxes are measured where they will be drawn
    renderer = fig.canvas.get_renderer()
    placed = []
    # Level with the point first (right, then left), then above/below: a label never sits level with
    # another method's point, which would read as that point's label.
    candidates = (
        (8, 0, "left"),
        (-8, 0, "right"),
        (8, 11, "left"),
        (-8, 11, "right"),
        (8, -11, "left"),
        (-8, -11, "right"),
    )
    for x, y, text in labels:
        for dx, dy, ha in candidates:
            note = ax.annotate(
                text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=9, ha=ha, va="center"
            )
            box = note.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed) or (dx, dy, ha) == candidates[-1]:
                placed.append(box)
                break
            note.remove()


def _accuracy_scatter(rows, key, xlabel, title, log_x, colors):
    fig, ax = _figure(8.6, 4.8)
    points = [r for r in rows if is_scored(r) and r["method"] != ZERO_SHOT and r.get(key) is not None]
    if log_x:
        points = [r for r in points if r[key] > 0]
    scale, unit = 1.0, ""
    if not log_x:  # time: seconds for short runs, minutes otherwise
        longest = max((r[key] for r in points), default=0)
        scale, unit = (60.0, "minutes") if longest >= 120 else (1.0, "seconds")
        xlabel = f"{xlabel} ({unit})"
    # Methods at the same point (e.g. LoRA and QLoRA train the same parameters) share one label and
    # get a small horizontal offset so both error bars stay visible.
    groups: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for r in points:
        groups.setdefault((round(r[key] / scale, 9), round(r["accuracy"], 6)), []).append(r)
    seen_x: dict[float, int] = {}
    span = max((r[key] / scale for r in points), default=1.0) or 1.0
    labels = []
    for (x0, _), members in groups.items():
        for r in members:
            k = seen_x.get(x0, 0)
            seen_x[x0] = k + 1
            x = x0 * (1.07**k) if log_x else x0 + k * 0.012 * span
            y = r["accuracy"] * 100
            err = [[y - r["ci95_low"] * 100], [r["ci95_high"] * 100 - y]]
            ax.errorbar(
                x, y, yerr=err, fmt="o", ms=7, capsize=4, color=colors[r["method"]], label=r["method"]
            )
            if r is members[0]:
                label_x = x
        labels.append((label_x, members[0]["accuracy"] * 100, " / ".join(r["method"] for r in members)))
    front = {r["method"]: r for r in points}
    frontier = [front[m] for m in pareto_front(points, key)]
    if len(frontier) > 1:
        ax.plot(
            [r[key] / scale for r in frontier],
            [r["accuracy"] * 100 for r in frontier],
            color="0.2",
            lw=1.0,
            alpha=0.6,
            zorder=1,
            label="Pareto front",
        )
    _reference_lines(ax, rows)
    xs = [r[key] / scale for r in points]
    if log_x:
        ax.set_xscale("log")
        if xs:
            ax.set_xlim(min(xs) / 3, max(xs) * 3)
    else:
        ax.set_xlim(0, (max(xs, default=0) or 1) * 1.2)
    _place_labels(fig, ax, labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%), 95% CI")
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    _legend_outside(ax)
    _failed_note(ax, rows)
    fig.tight_layout()
    return fig


def _memory_bars(rows, colors):
    fig, ax = _figure(7.5, 0.6 + 0.45 * max(len(rows), 2))
    shown = [r for r in rows if r.get("peak_memory_bytes")]
    names = [
        r["method"]
        + (" (eval only)" if r["method"] == ZERO_SHOT else "")
        + ("" if r.get("status") == "ok" else " (failed)")
        for r in shown
    ]
    values = [r["peak_memory_bytes"] / 2**20 for r in shown]
    bars = ax.barh(names, values, color=[colors[r["method"]] for r in shown])
    for bar, value in zip(bars, values, strict=True):
        ax.text(
            bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,.0f}", va="center", fontsize=9
        )
    ax.invert_yaxis()
    kinds = {r.get("peak_memory_kind") for r in shown}
    what = (
        "CUDA max allocated"
        if kinds == {"cuda_max_allocated"}
        else "peak RSS"
        if kinds == {"rss"}
        else "peak"
    )
    ax.set_xlabel(f"{what} per method process (MiB)")
    ax.set_xlim(0, max(values, default=1) * 1.18)
    ax.set_title("Peak memory per method (training + evaluation)", fontsize=11)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _learning_curves(rows, meta, colors):
    fig, ax = _figure(8.6, 4.8)
    for r in rows:
        if r["method"] == ZERO_SHOT or not r.get("learning_curve"):
            continue
        steps = [p[0] for p in r["learning_curve"]]
        accs = [p[1] * 100 for p in r["learning_curve"]]
        ax.plot(steps, accs, marker="o", ms=4, color=colors[r["method"]], label=r["method"])
    _reference_lines(ax, rows)
    shared = meta.get("shared", {})
    n = shared.get("eval_limit")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(
        f"Learning curves (validation subset of {n} questions; step 0 = untrained)"
        if n
        else "Learning curves (validation accuracy during training)",
        fontsize=11,
    )
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    _failed_note(ax, rows)
    fig.tight_layout()
    return fig


def write_plots(output: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[Path]:
    colors = _colors(rows)
    figures = {
        "accuracy_vs_params.png": _accuracy_scatter(
            rows,
            "trainable_params",
            "trainable parameters (log scale)",
            "Accuracy vs trainable parameters",
            log_x=True,
            colors=colors,
        ),
        "accuracy_vs_time.png": _accuracy_scatter(
            rows, "train_seconds", "training time", "Accuracy vs training time", log_x=False, colors=colors
        ),
        "peak_memory.png": _memory_bars(rows, colors),
        "learning_curves.png": _learning_curves(rows, meta, colors),
    }
    paths = []
    for name, fig in figures.items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        path = output / name
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths
