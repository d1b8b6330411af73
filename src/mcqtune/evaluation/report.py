"""``mcqtune eval --report DIR``: the metrics JSON, a Markdown summary and PNG charts.

Everything is drawn from the metrics dict alone (what ``compute_metrics`` and ``mcqtune.evaluation.analysis``
produce), so a report can be re-made from a saved ``metrics.json`` with :func:`write_report`.
Charts use matplotlib's Agg canvas directly (no pyplot, no global backend switch, no display).

Files written:

- ``metrics.json``: the full metrics;
- ``summary.md``: accuracy, letter bias, calibration, permutation and debiasing tables;
- ``confusion_matrix.png``: gold x predicted letter (and after debiasing, when run);
- ``letter_distribution.png``: gold vs predicted letters (and debiased / over all option orders);
- ``reliability.png``: reliability diagram (accuracy vs confidence per bin) with ECE;
- ``permutations.png``: accuracy under each option order, when ``--permutations`` ran.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from mcqtune.artifacts import METRICS
from mcqtune.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

COLORS = {"gold": "#7f7f7f", "predicted": "#1f77b4", "debiased": "#2ca02c", "orders": "#ff7f0e"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _confusion_axes(ax, bias: dict[str, Any], title: str) -> None:
    import numpy as np

    letters = bias["letters"]
    counts = np.array(bias["confusion"], dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for g in range(len(letters)):
        for p in range(len(letters)):
            ax.text(
                p,
                g,
                f"{int(counts[g, p])}",
                ha="center",
                va="center",
                color="white" if share[g, p] > 0.5 else "black",
                fontsize=9,
            )
    ax.set_xticks(range(len(letters)), letters)
    ax.set_yticks(range(len(letters)), letters)
    ax.set_xlabel("predicted letter")
    ax.set_ylabel("gold letter")
    ax.set_title(title, fontsize=10)


def plot_confusion(metrics: dict[str, Any], path: Path) -> Path | None:
    bias = metrics.get("letter_bias")
    if not bias or not bias.get("n"):
        return None
    after = (metrics.get("debias") or {}).get("after_letter_bias")
    panels = [("model", bias)] + ([("after debiasing", after)] if after else [])
    fig = _figure(4.0 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, data) in zip(axes, panels, strict=True):
        _confusion_axes(ax, data, f"{label}: accuracy {_accuracy_of(data) * 100:.1f}% (n={data['n']})")
    fig.suptitle("Gold vs predicted letter (cell colour: share of the gold row)", fontsize=10)
    return _save(fig, path)


def _accuracy_of(bias: dict[str, Any]) -> float:
    confusion = bias["confusion"]
    total = sum(sum(r) for r in confusion)
    return sum(confusion[i][i] for i in range(len(confusion))) / total if total else 0.0


def plot_letter_distribution(metrics: dict[str, Any], path: Path) -> Path | None:
    import numpy as np

    bias = metrics.get("letter_bias")
    if not bias or not bias.get("n"):
        return None
    letters = bias["letters"]
    series = [
        ("gold", bias["gold_distribution"], COLORS["gold"]),
        (f"predicted (TV {bias['tv_distance']:.2f})", bias["predicted_distribution"], COLORS["predicted"]),
    ]
    debias = metrics.get("debias") or {}
    if debias.get("after_letter_bias"):
        after = debias["after_letter_bias"]
        series.append(
            (f"debiased (TV {after['tv_distance']:.2f})", after["predicted_distribution"], COLORS["debiased"])
        )
    position = (metrics.get("permutations") or {}).get("position_bias")
    if position:
        series.append(
            (
                f"over all orders (gold balanced, TV {position['tv_distance']:.2f})",
                position["predicted_distribution"],
                COLORS["orders"],
            )
        )
    fig = _figure(6.4, 3.6)
    ax = fig.subplots()
    width = 0.8 / len(series)
    x = np.arange(len(letters))
    for i, (label, dist, color) in enumerate(series):
        values = [dist.get(letter, 0.0) for letter in letters]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label, color=color)
    ax.set_xticks(x, letters)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of questions")
    ax.set_title("Answer letters: gold vs predicted", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _reliability_axes(ax, cal: dict[str, Any], label: str, color: str) -> None:
    centres = [(b["lower"] + b["upper"]) / 2 for b in cal["bins"] if b["n"]]
    accuracy = [b["accuracy"] for b in cal["bins"] if b["n"]]
    confidence = [b["confidence"] for b in cal["bins"] if b["n"]]
    width = cal["bins"][0]["upper"] - cal["bins"][0]["lower"]
    ax.bar(centres, accuracy, width * 0.9, alpha=0.35, color=color, edgecolor=color)
    ax.plot(
        confidence,
        accuracy,
        "o-",
        color=color,
        label=f"{label}: ECE {cal['ece']:.3f}, Brier {cal['brier']:.3f}",
    )


def plot_reliability(metrics: dict[str, Any], path: Path) -> Path | None:
    cal = metrics.get("calibration")
    if not cal or not cal.get("n"):
        return None
    fig = _figure(5.6, 5.6)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], "--", color="#999999", label="perfect calibration")
    _reliability_axes(top, cal, "model", COLORS["predicted"])
    after = (metrics.get("debias") or {}).get("after_calibration")
    if after and after.get("n"):
        _reliability_axes(top, after, "debiased", COLORS["debiased"])
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy in bin")
    top.set_title(f"Reliability diagram ({len(cal['bins'])} confidence bins, n={cal['n']})", fontsize=10)
    top.legend(fontsize=8, loc="upper left")
    centres = [(b["lower"] + b["upper"]) / 2 for b in cal["bins"]]
    width = cal["bins"][0]["upper"] - cal["bins"][0]["lower"]
    bottom.bar(centres, [b["n"] for b in cal["bins"]], width * 0.9, color=COLORS["predicted"])
    bottom.set_xlabel("confidence (probability of the predicted option)")
    bottom.set_ylabel("questions")
    return _save(fig, path)


def plot_permutations(metrics: dict[str, Any], path: Path) -> Path | None:
    perm = metrics.get("permutations") or {}
    per_order = perm.get("accuracy_per_order")
    if not per_order:
        return None
    fig = _figure(max(5.0, 0.35 * len(per_order) + 2.5), 3.6)
    ax = fig.subplots()
    ax.bar(range(len(per_order)), per_order, color=COLORS["orders"])
    for key, style, label in (
        ("accuracy_mean", "-", "mean over orders"),
        ("accuracy_circular", ":", "circular (right under every order)"),
        ("accuracy_ensemble", "--", "order-averaged scores"),
    ):
        if key in perm:
            ax.axhline(perm[key], linestyle=style, color="black", label=f"{label} {perm[key] * 100:.1f}%")
    ax.set_xticks(
        range(len(per_order)), perm.get("orders", [str(i) for i in range(len(per_order))]), rotation=60
    )
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_xlabel("option order shown as A, B, C, ... (original letters)")
    ax.set_title(f"Accuracy per option order ({perm['mode']})", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def summary_markdown(metrics: dict[str, Any], title: str, images: list[str]) -> str:
    lines = [f"# {title}", ""]
    lines += ["| metric | value |", "| --- | --- |"]
    rows = [
        ("data", metrics.get("data")),
        ("model", metrics.get("model")),
        ("adapter", metrics.get("adapter") or "none (zero-shot)"),
        ("scoring", metrics.get("scoring")),
        ("questions", metrics.get("n")),
    ]
    if "accuracy" in metrics:
        low, high = metrics["ci95"]
        rows += [
            ("accuracy", f"{_pct(metrics['accuracy'])} (95% CI {_pct(low)}–{_pct(high)})"),
            (
                "majority-letter baseline",
                f"{_pct(metrics['majority_baseline'])} (always {metrics['majority_letter']})",
            ),
        ]
    bias = metrics.get("letter_bias") or {}
    if bias.get("n"):
        rows += [
            ("predicted vs gold letters: total variation", f"{bias['tv_distance']:.3f}"),
            ("predicted vs gold letters: KL(pred ‖ gold)", f"{bias['kl_divergence']:.3f}"),
            ("macro recall over letters", _pct(bias.get("macro_recall"))),
        ]
    cal = metrics.get("calibration") or {}
    if cal.get("n"):
        rows += [
            ("ECE (10 bins)", f"{cal['ece']:.3f}"),
            ("Brier score", f"{cal['brier']:.3f}"),
            ("mean confidence", _pct(cal["mean_confidence"])),
        ]
    perm = metrics.get("permutations") or {}
    if "accuracy_mean" in perm:
        rows += [
            (
                f"accuracy averaged over {perm['orders_per_question']} orders ({perm['mode']})",
                _pct(perm["accuracy_mean"]),
            ),
            ("circular accuracy (right under every order)", _pct(perm["accuracy_circular"])),
            ("questions whose answer changes with order", _pct(perm["answer_changes_share"])),
            ("accuracy of order-averaged scores", _pct(perm["accuracy_ensemble"])),
        ]
    lines += [f"| {k} | {v} |" for k, v in rows if v is not None]
    if bias.get("n"):
        letters = bias["letters"]
        lines += [
            "",
            "## Letter bias",
            "",
            "| letter | gold | predicted | precision | recall | F1 |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for letter in letters:
            v = bias["per_letter"][letter]
            lines.append(
                f"| {letter} | {v['gold']} | {v['predicted']} | {_pct(v['precision'])} "
                f"| {_pct(v['recall'])} | {_pct(v['f1'])} |"
            )
        lines += ["", "Confusion matrix (rows: gold letter, columns: predicted letter):", ""]
        lines.append("| gold \\ predicted | " + " | ".join(letters) + " |")
        lines.append("| --- |" + " ---: |" * len(letters))
        for letter, row in zip(letters, bias["confusion"], strict=True):
            lines.append(f"| **{letter}** | " + " | ".join(str(c) for c in row) + " |")
    debias = metrics.get("debias")
    if debias and "all_rows" in debias:
        lines += ["", "## Debiasing (content-free letter prior)", ""]
        prior = "; ".join(
            f"{k} options: " + " ".join(f"{letter} {p * 100:.1f}%" for letter, p in dist.items())
            for k, dist in debias["prior"].items()
        )
        calibrated = ", ".join(f"{n} questions with {k} options" for k, n in debias["n_calibration"].items())
        lines.append(
            f"Prior {prior}, estimated without labels from {calibrated} ({debias.get('calibration_source')})."
        )
        lines += [
            "",
            "| rows | n | accuracy before | accuracy after | TV before | TV after |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for key, label in (("all_rows", "all"), ("outside_calibration", "outside the calibration sample")):
            if key in debias:
                part = debias[key]
                lines.append(
                    f"| {label} | {part['n']} | {_pct(part['before']['accuracy'])} "
                    f"| {_pct(part['after']['accuracy'])} "
                    f"| {part['before']['tv_distance']:.3f} | {part['after']['tv_distance']:.3f} |"
                )
        if "permutations_after" in debias:
            after = debias["permutations_after"]
            lines.append(
                f"\nAfter debiasing, accuracy averaged over orders {_pct(after.get('accuracy_mean'))}, "
                f"circular {_pct(after.get('accuracy_circular'))}, answer changes with order on "
                f"{_pct(after.get('answer_changes_share'))} of questions."
            )
    if images:
        lines += ["", "## Charts", ""]
        lines += [f"![{Path(name).stem}]({name})" for name in images]
    return "\n".join(lines) + "\n"


def write_report(
    directory: str | Path, metrics: dict[str, Any], title: str = "mcqtune evaluation"
) -> list[Path]:
    """Write metrics.json, summary.md and the PNGs into ``directory``; returns the files written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / METRICS]
    atomic_write_json(written[0], metrics)
    images = []
    for name, plot in (
        ("confusion_matrix.png", plot_confusion),
        ("letter_distribution.png", plot_letter_distribution),
        ("reliability.png", plot_reliability),
        ("permutations.png", plot_permutations),
    ):
        path = plot(metrics, directory / name)
        if path is not None:
            images.append(name)
            written.append(path)
    summary = directory / "summary.md"
    atomic_write_text(summary, summary_markdown(metrics, title, images))
    written.append(summary)
    return written
