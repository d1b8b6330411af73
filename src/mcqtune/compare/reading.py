"""The "reading" of a compare: a few sentences computed from the table's rows, never canned text.

Winner, ties with the best (the paired test where the table has one, else overlapping 95% CIs), the
comparison with zero-shot (the same rule), accuracy gained over zero-shot per GiB of peak memory, per
minute of training and per million trainable parameters, letter bias, tuning, transfer, failures.
"""

from __future__ import annotations

from typing import Any

from mcqtune.compare.evidence import ZERO_SHOT, pareto_front
from mcqtune.compare.table import (
    fmt_accuracy,
    fmt_ci,
    fmt_count,
    fmt_mib,
    fmt_number,
    fmt_pct,
    fmt_points,
    fmt_seconds,
    is_scored,
    transfer_sets,
)

# Letter-distribution distance above which the reading calls out a letter bias.
LETTER_BIAS_TV = 0.15


def ci_overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["ci95_low"] <= b["ci95_high"] and b["ci95_low"] <= a["ci95_high"]


def tied_with_best(row: dict[str, Any], best: dict[str, Any]) -> bool:
    """Not shown to differ from the best: by the paired test on the same questions where the table has
    one (Holm-adjusted, 5%), else by overlapping 95% CIs. Overlapping CIs are no test: two methods a few
    points apart on the same 500 questions often overlap yet differ clearly when paired."""
    test = row.get("vs_best")
    if test is not None:
        return not test["significant"]
    return ci_overlap(row, best)


def versus_zero_shot(row: dict[str, Any], best: dict[str, Any], zero: dict[str, Any]) -> tuple[str, bool]:
    """Where ``row`` stands against zero-shot ("above", "level" or "below") and whether a paired test
    decided it. The table's paired test with zero-shot is the best's (the zero-shot row's ``vs_best``,
    Holm-adjusted, 5%): it decides for the best, as the paired tests decide the ties with the best; a row
    without a paired test against zero-shot goes by its 95% CI against zero-shot's."""
    test = zero.get("vs_best")
    if test is not None and row is best and test.get("best", best["method"]) == row["method"]:
        if not test["significant"]:
            return "level", True
        difference = test.get("difference", row["accuracy"] - zero["accuracy"])  # best minus zero-shot
        return ("above" if difference > 0 else "below"), True
    if row["ci95_low"] > zero["ci95_high"]:
        return "above", False
    if row["ci95_high"] < zero["ci95_low"]:
        return "below", False
    return "level", False


PAIRED_RULE = "by the paired test (Holm, 5%)"


def _zero_shot_line(trained: list[dict[str, Any]], best: dict[str, Any], zero: dict[str, Any]) -> str:
    """Every trained method against doing nothing, grouped by verdict, each group naming its rule."""
    groups: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    for r in trained:
        groups.setdefault(versus_zero_shot(r, best, zero), []).append(r)
    mixed = any(by_test for _, by_test in groups)  # then the CI groups say that they went by CIs

    def by_ci(rule: str) -> str:
        return f" ({rule})" if mixed else ""

    wording = {
        ("above", True): f"better than zero-shot {PAIRED_RULE}",
        ("above", False): "clearly better than zero-shot (CIs do not overlap)",
        ("level", True): f"not shown to differ from zero-shot {PAIRED_RULE}",
        ("level", False): "not distinguishable from zero-shot" + by_ci("CIs overlap"),
        ("below", True): f"worse than zero-shot {PAIRED_RULE}",
        ("below", False): "worse than zero-shot" + by_ci("CIs do not overlap"),
    }
    parts = [f"{text}: {_names(groups[key])}" for key, text in wording.items() if key in groups]
    return "Against doing nothing: " + "; ".join(parts) + "."


def _tie_rule(rows: list[dict[str, Any]]) -> str:
    tested = any(r.get("vs_best") for r in rows)
    return "not shown to differ from the best by the paired test" if tested else "within the best's CI"


def _names(rows: list[dict[str, Any]]) -> str:
    return ", ".join(r["method"] for r in rows)


def _efficiency(
    trained: list[dict[str, Any]],
    best: dict[str, Any],
    zero: dict[str, Any] | None,
    key: str,
    scale: float,
    unit: str,
    cost_fmt,
    label: str,
) -> str | None:
    """Most gain over zero-shot per unit of a cost; the cheapest method statistically tied with the best."""
    have = [r for r in trained if r.get(key) is not None]
    if not have:
        return None
    parts = []
    reference = zero["accuracy"] if zero else None
    positive = [r for r in have if reference is not None and r["accuracy"] > reference and r[key] > 0]
    if positive:

        def gain_per_unit(r: dict[str, Any]) -> float:
            return (r["accuracy"] - reference) * 100 / (r[key] / scale)

        top = max(positive, key=gain_per_unit)
        parts.append(
            f"most accuracy gained over zero-shot per {unit}: **{top['method']}** "
            f"({fmt_number(gain_per_unit(top))} points per {unit}; "
            f"{fmt_points(top['accuracy'] - reference)} points for {cost_fmt(top[key])})"
        )
    elif reference is not None:
        parts.append("no method beat zero-shot, so no gain per unit to compare")
    # Cheapest statistical tie with the best, among methods scoring above doing nothing (a point
    # estimate: whether that is beyond noise is the zero-shot sentence's to say).
    tied = [r for r in have if tied_with_best(r, best) and (reference is None or r["accuracy"] > reference)]
    if tied and best in tied:
        cheapest = min(tied, key=lambda r: r[key])
        if tied == [best]:
            parts.append(f"no other method is tied with the best, {best['method']}")
        elif cheapest is best:
            parts.append(f"the best method, {best['method']}, is also the cheapest among those tied with it")
        else:
            parts.append(
                f"cheapest method {_tie_rule(have)} that scores above zero-shot: **{cheapest['method']}** "
                f"({cost_fmt(cheapest[key])} vs {cost_fmt(best[key])} for {best['method']}, accuracy "
                f"{fmt_pct(cheapest['accuracy'])} vs {fmt_pct(best['accuracy'])})"
            )
    return f"{label}: " + "; ".join(parts) + "." if parts else None


def reading_of_results(results: dict[str, Any]) -> list[str]:
    """A few sentences computed from the rows: winner, ties, efficiency, letter bias, failures."""
    rows = results["rows"]
    lines: list[str] = []
    zero = next((r for r in rows if r["method"] == ZERO_SHOT and is_scored(r)), None)
    trained = [r for r in rows if r["method"] != ZERO_SHOT and is_scored(r)]
    failed = [r for r in rows if r.get("status") != "ok"]
    if trained:
        best = max(trained, key=lambda r: (r["accuracy"], -(r.get("train_seconds") or 0)))
        n = best.get("n_eval")
        text = (
            f"Best accuracy: **{best['method']}** {fmt_pct(best['accuracy'])} "
            f"(95% CI {fmt_ci(best['ci95_low'], best['ci95_high'])}, n={n})"
        )
        if zero:
            gain = fmt_points(best["accuracy"] - zero["accuracy"])
            text += f", {gain} points over zero-shot ({fmt_pct(zero['accuracy'])})"
        text += (
            f" and {fmt_points(best['accuracy_minus_baseline'])} over the majority-letter baseline "
            f"({fmt_pct(best['majority_baseline'])})."
        )
        lines.append(text)
        tied = [r for r in trained if r is not best and tied_with_best(r, best)]
        behind = _names([r for r in trained if r is not best and r not in tied]) or "none"
        if any(r.get("vs_best") for r in trained):
            lines.append(
                f"Not shown to differ from the best by the paired test (Holm, 5%): {_names(tied) or 'none'}; "
                f"behind it: {behind}."
            )
        elif tied:
            lines.append(
                f"Within the best's 95% CI (overlapping intervals, not distinguishable at n={n}): "
                f"{_names(tied)}; clearly behind it: {behind}."
            )
        else:
            lines.append(
                f"No other method's 95% CI overlaps {best['method']}'s: it is ahead beyond sampling noise."
            )
        if zero:
            lines.append(_zero_shot_line(trained, best, zero))
        at_baseline = [r for r in trained if r["ci95_low"] <= r["majority_baseline"]]
        if at_baseline:
            lines.append(
                f"Not clearly above the majority-letter baseline (CI reaches it): {_names(at_baseline)}."
            )
        for args in (
            ("peak_memory_bytes", 2**30, "GiB of peak memory", fmt_mib, "Memory"),
            ("train_seconds", 60.0, "minute of training", fmt_seconds, "Time"),
            ("trainable_params", 1e6, "million trainable parameters", fmt_count, "Parameters"),
        ):
            sentence = _efficiency(trained, best, zero, *args)
            if sentence:
                lines.append(sentence)
    elif zero:
        lines.append("No method finished training; only the zero-shot row has numbers.")
    biased = []
    for r in ([zero] if zero else []) + trained:
        tv = r.get("letter_tv_distance")
        pred = r.get("predicted_letter_distribution") or {}
        gold = r.get("gold_letter_distribution") or {}
        if tv is not None and tv > LETTER_BIAS_TV and pred:
            letter = max(pred, key=lambda k: pred[k] - gold.get(k, 0.0))
            biased.append(
                f"{r['method']} answers {letter} {pred[letter] * 100:.0f}% of the time "
                f"(gold {gold.get(letter, 0) * 100:.0f}%, TV {tv:.2f})"
            )
    if biased:
        lines.append(
            f"Letter bias (predicted vs gold letter distribution, TV distance > {LETTER_BIAS_TV}): "
            + "; ".join(biased)
            + "."
        )
    lines += _tuning_lines(results) + _paired_lines(rows) + _transfer_lines(rows) + _pareto_lines(rows)
    for r in failed:
        lines.append(f"{r['method']} failed: {r.get('error') or 'unknown error'}.")
    for r in rows:
        for note in r.get("failed_seeds") or []:
            lines.append(f"{r['method']}: a seed failed and is left out of its mean ({note}).")
    machine = results.get("machine") or {}
    cpus = machine.get("logical_cpus")
    loads = [machine.get(k) for k in ("load_average_at_start", "load_average_now") if machine.get(k)]
    busiest = max((load[0] for load in loads), default=None)
    if cpus and busiest is not None and busiest > 1.5 * cpus:
        lines.append(
            f"The machine was busy (1-minute load average up to {busiest:.1f} on {cpus} CPUs): times and "
            "throughputs are inflated and their ratios less reliable than on an idle machine."
        )
    return lines


def _tuning_lines(results: dict[str, Any]) -> list[str]:
    tuning = results.get("tuning")
    if not tuning:
        return []
    dev = tuning["dev"]
    chosen = "; ".join(
        f"{m} **{v['chosen']:g}** (from {', '.join(f'{x:g}' for x in v['grid'])})"
        for m, v in tuning["methods"].items()
    )
    lines = [
        f"Learning rates tuned on a dev split of {dev['size']} training rows (seed {dev['seed']}; no "
        f"validation or further-set question among them, {dev['excluded_overlaps']} training rows repeating "
        f"one kept out), trials trained on the other {dev['train_rows']} and pruned by successive halving: "
        f"{chosen}."
    ]
    methods = tuning["methods"]
    edges = {
        side: [m for m, v in methods.items() if len(v["grid"]) > 1 and v["chosen"] == pick(v["grid"])]
        for side, pick in (("largest", max), ("smallest", min))
    }
    for side, names in edges.items():
        if names:
            lines.append(
                f"Chosen at the {side} value of its grid: {', '.join(names)}; the best rate may lie beyond "
                "it (widen `lr_grid` in the method's YAML to look)."
            )
    return lines


def _paired_lines(rows: list[dict[str, Any]]) -> list[str]:
    """In plain words, which methods differ from the best at 5% (paired tests on the same questions,
    Holm-adjusted over the table's tests)."""
    best = next((r for r in rows if r.get("is_best")), None)
    tested = [r for r in rows if r.get("vs_best")]
    if best is None or not tested:
        return []
    test = tested[0]["vs_best"]
    seeds = f" × {test['runs']} seeds (run k paired with run k)" if test["runs"] > 1 else ""
    behind = [r for r in tested if r["vs_best"]["significant"]]
    level = [r for r in tested if not r["vs_best"]["significant"]]
    summary = (
        f"Paired tests against the best, **{best['method']}**, on the same {test['n']} questions{seeds}, "
        f"Holm-adjusted over these {test.get('family', len(tested))}: "
        + (
            f"significantly different at 5%: {_names(behind)}"
            if behind
            else "no method differs significantly at 5%"
        )
        + (f"; not distinguishable from it: {_names(level)}" if level else "")
        + "."
    )
    return [summary] + [r["vs_best"]["verdict"] for r in tested]


def _transfer_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    ok = [r for r in rows if is_scored(r)]
    best = next((r["method"] for r in rows if r.get("is_best")), None)
    for name in transfer_sets(rows):
        scored = [r for r in ok if name in (r.get("transfer") or {})]
        if not scored:
            continue
        first = scored[0]["transfer"][name]
        accuracies = ", ".join(f"{r['method']} {fmt_accuracy(r['transfer'][name])}" for r in scored)
        differ = [r for r in scored if (r["transfer"][name].get("vs_best") or {}).get("significant")]
        verdict = (
            f"different from {best} (the in-domain best) at 5%: {_names(differ)}"
            if differ
            else f"none differs significantly from {best} (the in-domain best) at 5%"
        )
        lines.append(
            f"Transfer to **{name}** (n={first['n_eval']}, majority baseline "
            f"{fmt_pct(first['majority_baseline'])}): {accuracies}; {verdict}."
        )
    return lines


PARETO_COSTS = (("trainable_params", "trainable parameters"), ("train_seconds", "training time"))


def _pareto_lines(rows: list[dict[str, Any]]) -> list[str]:
    parts = [f"by {label}: {', '.join(pareto_front(rows, key)) or 'none'}" for key, label in PARETO_COSTS]
    if not any(is_scored(r) and r["method"] != ZERO_SHOT for r in rows):
        return []
    return ["Pareto-optimal (no other method is both more accurate and cheaper): " + "; ".join(parts) + "."]
