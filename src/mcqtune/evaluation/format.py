"""The text ``eval``, ``train`` and ``compare`` print for the metrics of :mod:`mcqtune.evaluation.metrics`."""

from __future__ import annotations

from typing import Any


def format_distribution(dist: dict[str, float]) -> str:
    """``A:25% B:30% ...`` for a letter -> share mapping."""
    return " ".join(f"{k}:{v * 100:.0f}%" for k, v in dist.items())


def format_metrics(metrics: dict[str, Any], title: str = "") -> str:
    lines = [title] if title else []
    if "accuracy" in metrics:
        low, high = metrics["ci95"]
        lines.append(
            f"accuracy {metrics['accuracy'] * 100:.1f}% (95% CI {low * 100:.1f}-{high * 100:.1f}, "
            f"n={metrics['n']}, scoring={metrics['scoring']})"
        )
        lines.append(
            f"majority-letter baseline {metrics['majority_baseline'] * 100:.1f}% "
            f"(always '{metrics['majority_letter']}')"
        )
        lines.append(f"gold letters      {format_distribution(metrics['gold_letter_distribution'])}")
    lines.append(f"predicted letters {format_distribution(metrics['predicted_letter_distribution'])}")
    for text in (
        format_letter_bias(metrics.get("letter_bias") or {}),
        format_calibration(metrics.get("calibration") or {}),
        format_temperature(metrics.get("temperature_scaling") or {}),
    ):
        if text:
            lines.append(text)
    if metrics.get("skipped"):
        lines.append(f"skipped {metrics['skipped']} rows that did not fit max_length")
    return "\n".join(lines)


def format_letter_bias(bias: dict[str, Any]) -> str:
    """Two lines for the eval printout: distances and per-letter recall/precision."""
    if not bias.get("n"):
        return ""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.0f}%"

    recall = " ".join(f"{k}:{pct(v['recall'])}" for k, v in bias["per_letter"].items())
    precision = " ".join(f"{k}:{pct(v['precision'])}" for k, v in bias["per_letter"].items())
    return (
        f"letter bias       TV(predicted, gold) {bias['tv_distance']:.3f}, "
        f"KL {bias['kl_divergence']:.3f}, macro recall {bias['macro_recall'] * 100:.1f}%\n"
        f"per-letter recall {recall}   precision {precision}"
    )


def format_confusion(bias: dict[str, Any]) -> str:
    letters = bias["letters"]
    width = max(5, *(len(str(c)) + 1 for row in bias["confusion"] for c in row))
    lines = ["confusion (rows gold, columns predicted)", "     " + "".join(f"{x:>{width}}" for x in letters)]
    for letter, row in zip(letters, bias["confusion"], strict=True):
        lines.append(f"  {letter}  " + "".join(f"{c:>{width}}" for c in row))
    return "\n".join(lines)


def format_calibration(cal: dict[str, Any]) -> str:
    if not cal.get("n"):
        return ""
    return (
        f"calibration       ECE {cal['ece']:.3f} ({len(cal['bins'])} bins), Brier {cal['brier']:.3f}, "
        f"mean confidence {cal['mean_confidence'] * 100:.1f}% vs accuracy {cal['accuracy'] * 100:.1f}%"
    )


def format_temperature(summary: dict[str, Any]) -> str:
    """Training's temperature fit (ECE before and after) or eval's account of its probabilities."""
    if "temperature" in summary and "ece_before" in summary:
        return (
            f"temperature       {summary['temperature']:.3f} fitted on {summary['n']} questions: ECE "
            f"{summary['ece_before']:.3f} -> {summary['ece_after']:.3f}, NLL "
            f"{summary['nll_before']:.3f} -> {summary['nll_after']:.3f} (after: cross-fitted)"
        )
    if summary.get("probability_kind") == "calibrated":
        after = summary.get("calibration_after") or {}
        ece = f", ECE after it {after['ece']:.3f}" if after.get("n") else ""
        temperature = summary["temperature"]
        return f"probabilities     calibrated with the artifact's temperature {temperature:.3f}{ece}"
    if summary.get("probability_kind"):
        return f"probabilities     uncalibrated scores: {summary.get('note', '')}"
    return ""


def format_permutation_summary(summary: dict[str, Any], title: str = "") -> str:
    lines = [title] if title else []
    head = (
        f"permutations      {summary['mode']}: {summary['orders_per_question']} orders x {summary['n']} "
        f"questions ({summary['scored_prompts']} prompts, {summary['seconds']:.1f}s)"
    )
    lines.append(head)
    if "accuracy_mean" in summary:
        lines.append(
            f"  accuracy: original order {summary['accuracy_original'] * 100:.1f}%, "
            f"mean over orders {summary['accuracy_mean'] * 100:.1f}%, "
            f"circular {summary['accuracy_circular'] * 100:.1f}%, "
            f"order-averaged scores {summary['accuracy_ensemble'] * 100:.1f}%"
        )
    lines.append(
        f"  answer changes with option order on {summary['answer_changes_share'] * 100:.1f}% of questions; "
        f"an option's log-probability moves by {summary.get('logprob_spread_mean', 0):.3g} on average "
        f"(max {summary.get('logprob_spread_max', 0):.3g}) across orders"
    )
    if "position_bias" in summary:
        pb = summary["position_bias"]
        dist = format_distribution(pb["predicted_distribution"])
        lines.append(f"  predicted letters over all orders {dist} (TV from gold {pb['tv_distance']:.3f})")
    return "\n".join(lines)


def format_debias_summary(summary: dict[str, Any]) -> str:
    lines = []
    calib = ", ".join(f"{v} questions with {k} options" for k, v in summary["n_calibration"].items())
    prior = "; ".join(format_distribution(dist) for dist in summary["prior"].values())
    lines.append(f"debias            prior {prior} (from {calib}; {summary.get('calibration_source') or ''})")
    for key, label in (
        ("all_rows", "all rows"),
        ("outside_calibration", "rows outside the calibration sample"),
    ):
        if key not in summary:
            continue
        part = summary[key]
        b, a = part["before"], part["after"]
        dist_b = format_distribution(b["predicted_distribution"])
        dist_a = format_distribution(a["predicted_distribution"])
        lines.append(
            f"  {label} (n={part['n']}): accuracy {b['accuracy'] * 100:.1f}% -> {a['accuracy'] * 100:.1f}%, "
            f"TV from gold {b['tv_distance']:.3f} -> {a['tv_distance']:.3f}"
        )
        if key == "all_rows":
            lines.append(f"  predicted letters before {dist_b}  after {dist_a}")
    lines.append(f"  predictions changed on {summary['changed_predictions_share'] * 100:.1f}% of questions")
    return "\n".join(lines)
