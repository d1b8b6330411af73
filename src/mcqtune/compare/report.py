"""Writing `mcqtune compare` results: CSV, Markdown table, PNG plots and a self-contained HTML page.

Every number shown in a report goes through the ``fmt_*`` helpers below from ``results.json`` rows, so
the report and the JSON cannot disagree. The "reading" is computed from the rows (overlapping 95% CIs,
accuracy gain over zero-shot per GiB of peak memory, per minute of training, per million trainable
parameters), never canned text.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any

from mcqtune.atomic import atomic_write_bytes, atomic_write_text
from mcqtune.compare.evidence import ZERO_SHOT, pareto_front

PLOT_FILES = ("accuracy_vs_params.png", "accuracy_vs_time.png", "peak_memory.png", "learning_curves.png")
CSV_COLUMNS = (
    "method",
    "status",
    "error",
    "objective",
    "scoring",
    "lr",
    "n_eval",
    "accuracy",
    "accuracy_spread",
    "seeds",
    "ci95_low",
    "ci95_high",
    "majority_baseline",
    "accuracy_minus_baseline",
    "vs_best_p",
    "vs_best_p_holm",
    "vs_best_significant",
    "lr_tuned",
    "predicted_letter_distribution",
    "letter_tv_distance",
    "permutation_accuracy",
    "trainable_params",
    "trainable_percent",
    "total_params",
    "artifact_bytes",
    "train_seconds",
    "train_tokens_per_second",
    "steps",
    "examples_seen",
    "best_step",
    "wall_seconds",
    "peak_memory_bytes",
    "peak_memory_kind",
    "eval_questions_per_second",
    "run_dir",
)
# Letter-distribution distance above which the reading calls out a letter bias.
LETTER_BIAS_TV = 0.15
DASH = "—"


# ------------------------------------------------------------------------------------------- formatting
def fmt_pct(x: float | None) -> str:
    return DASH if x is None else f"{x * 100:.1f}%"


def fmt_points(x: float | None) -> str:
    return DASH if x is None else f"{x * 100:+.1f}"


def fmt_ci(low: float | None, high: float | None) -> str:
    return DASH if low is None or high is None else f"{low * 100:.1f}–{high * 100:.1f}"


def fmt_count(n: int | None) -> str:
    if n is None:
        return DASH
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def fmt_share(p: float | None) -> str:
    """Trainable share of all parameters: readable from 100% down to prefix-tuning's 0.00x%."""
    if p is None:
        return DASH
    if p == 0:
        return "0%"
    if p >= 10:
        return f"{p:.0f}%"
    if p >= 0.1:
        return f"{p:.2f}%"
    return f"{p:.2g}%"


def fmt_mib(b: int | float | None) -> str:
    if b is None:
        return DASH
    if b == 0:
        return "0"
    mib = b / 2**20
    return f"{mib:.0f} MiB" if mib >= 100 else f"{mib:.1f} MiB" if mib >= 0.1 else f"{b / 1024:.1f} KiB"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return DASH
    if s == 0:
        return "0 s"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def fmt_rate(x: float | None, digits: int = 1) -> str:
    return DASH if x is None else f"{x:.{digits}f}"


def fmt_tv(x: float | None) -> str:
    return DASH if x is None else f"{x:.2f}"


def fmt_letters(dist: dict[str, float] | None) -> str:
    if not dist:
        return DASH
    return " ".join(f"{k}:{v * 100:.0f}" for k, v in dist.items())


def fmt_number(x: float) -> str:
    """Three significant digits without scientific notation (ratios in the reading)."""
    if x == 0 or not abs(x) < 1e15:
        return f"{x:g}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    digits = max(0, 2 - int(f"{abs(x):e}".split("e")[1]))
    return f"{x:.{digits}f}"


def _ok(row: dict[str, Any]) -> bool:
    return row.get("status") == "ok" and row.get("accuracy") is not None


P_HEADER = "vs best: p (Holm)"  # the paired test against the best method, Holm-adjusted
TABLE_HEADER = (
    "method",
    "accuracy",
    "95% CI",
    "majority baseline",
    "acc − baseline (pts)",
    P_HEADER,
    "lr",
    "predicted letters (%)",
    "letter TV",
    "perm. accuracy",
    "trainable params",
    "trainable %",
    "artifact",
    "train time",
    "train tok/s",
    "peak memory",
    "eval q/s",
)


UNPACKED_MARK = " †"
UNPACKED_NOTE = (
    "† scores each option as its own row (prefix key/values cannot share a packed row), so the question "
    "is processed once per option: its tokens/s counts those repeats and is not comparable with the others."
)


def _unpacked(row: dict[str, Any]) -> bool:
    return row.get("packed_options") is False and row.get("scoring") == "cloze"


# Each further data set's column group (--eval-data), after the in-domain columns.
TRANSFER_HEADER = ("accuracy", "95% CI", "majority baseline", P_HEADER)


def fmt_accuracy(scores: dict[str, Any]) -> str:
    """Accuracy; over several seeds their mean ± spread (sample standard deviation), in points."""
    text = fmt_pct(scores.get("accuracy"))
    if (scores.get("seed_accuracies") and len(scores["seed_accuracies"]) > 1) and scores.get(
        "accuracy_spread"
    ) is not None:
        text += f" ± {scores['accuracy_spread'] * 100:.1f}"
    return text


def fmt_p(scores: dict[str, Any]) -> str:
    """The paired test against the best method: its Holm-adjusted p, starred when significant at 5%."""
    if scores.get("is_best"):
        return "best"
    test = scores.get("vs_best")
    if not test:
        return DASH
    return f"{test['p_holm']:.2g}" + (" *" if test["significant"] else "")


def fmt_lr(row: dict[str, Any]) -> str:
    if row.get("lr") is None:
        return DASH
    return f"{row['lr']:g}" + (" (tuned)" if row.get("lr_tuned") else "")


def transfer_sets(rows: list[dict[str, Any]]) -> list[str]:
    """The further data sets the rows were scored on, in the order given."""
    return list(dict.fromkeys(name for r in rows for name in r.get("transfer") or {}))


def table_header(rows: list[dict[str, Any]]) -> list[str]:
    return list(TABLE_HEADER) + [f"{name}: {h}" for name in transfer_sets(rows) for h in TRANSFER_HEADER]


def _transfer_cells(row: dict[str, Any], sets: list[str]) -> list[str]:
    cells = []
    for name in sets:
        scores = (row.get("transfer") or {}).get(name) or {}
        cells += [
            fmt_accuracy(scores),
            fmt_ci(scores.get("ci95_low"), scores.get("ci95_high")),
            fmt_pct(scores.get("majority_baseline")),
            fmt_p(scores | {"is_best": row.get("is_best")}) if scores else DASH,
        ]
    return cells


def table_cells(row: dict[str, Any], sets: list[str] | None = None) -> list[str]:
    """One row of the table, as shown in both report.md and report.html (``sets``: the further data
    sets' column groups)."""
    sets = sets or []
    if row.get("status") != "ok":
        error = (row.get("error") or "failed").replace("|", "/")
        width = len(TABLE_HEADER) + len(TRANSFER_HEADER) * len(sets)
        return [row["method"], f"FAILED: {error}"] + [DASH] * (width - 2)
    return [
        row["method"],
        fmt_accuracy(row),
        fmt_ci(row["ci95_low"], row["ci95_high"]),
        fmt_pct(row["majority_baseline"]),
        fmt_points(row["accuracy_minus_baseline"]),
        fmt_p(row),
        fmt_lr(row),
        fmt_letters(row["predicted_letter_distribution"]),
        fmt_tv(row["letter_tv_distance"]),
        fmt_pct(row["permutation_accuracy"]),
        fmt_count(row["trainable_params"]),
        fmt_share(row["trainable_percent"]),
        fmt_mib(row["artifact_bytes"]),
        fmt_seconds(row["train_seconds"]),
        fmt_rate(row["train_tokens_per_second"], 0) + (UNPACKED_MARK if _unpacked(row) else ""),
        fmt_mib(row["peak_memory_bytes"]),
        fmt_rate(row["eval_questions_per_second"]),
        *_transfer_cells(row, sets),
    ]


def _shown_columns(rows: list[dict[str, Any]]) -> list[int]:
    """Drop the permutation column while nothing fills it (letter scoring run with --permutations none),
    and the paired-test column while there is nothing to test (a single method)."""
    keep = list(range(len(table_header(rows))))
    if all(r.get("permutation_accuracy") is None for r in rows):
        keep.remove(TABLE_HEADER.index("perm. accuracy"))
    if not any(r.get("vs_best") for r in rows):
        keep.remove(TABLE_HEADER.index(P_HEADER))
    return keep


# ------------------------------------------------------------------------------------------- CSV / MD
def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        out = dict(row)
        out["predicted_letter_distribution"] = fmt_letters(row.get("predicted_letter_distribution")).replace(
            DASH, ""
        )
        test = row.get("vs_best") or {}
        out["vs_best_p"], out["vs_best_p_holm"] = test.get("p_value"), test.get("p_holm")
        out["vs_best_significant"] = test.get("significant")
        writer.writerow({k: "" if out.get(k) is None else out[k] for k in CSV_COLUMNS})
    atomic_write_text(path, buffer.getvalue())


def _setup_sentence(results: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    shared = results.get("shared", {})
    sizes = sorted({r["n_eval"] for r in rows if r.get("n_eval")})
    n = sizes[0] if len(sizes) == 1 else "/".join(map(str, sizes)) if sizes else None
    scoring = next((r["scoring"] for r in rows if r.get("scoring")), "?")
    objective = next((r["objective"] for r in rows if r.get("objective") and r["method"] != ZERO_SHOT), None)
    trained = [r for r in rows if r["method"] != ZERO_SHOT]
    budget = results.get("budget") or {}
    if budget.get("kind") == "time":
        length = (
            f"for {fmt_seconds(budget['seconds'])} of training each (as many steps as fit; steps per "
            f"method in results.json) × batch {shared.get('batch_size')} × accumulation "
            f"{shared.get('grad_accum')} (seed {shared.get('seed')})"
        )
    else:
        length = (
            f"for {shared.get('max_steps')} steps × batch {shared.get('batch_size')} × accumulation "
            f"{shared.get('grad_accum')} ({results.get('examples_seen')} examples seen, "
            f"seed {shared.get('seed')})"
        )
    seeds = results.get("seeds") or 1
    first_seed = shared.get("seed", 0)
    repeats = (
        f" Each method trained {seeds} times (seeds {first_seed}–{first_seed + seeds - 1}):"
        " accuracy is the mean ± the sample standard deviation over seeds, its CI the mean of theirs."
        if seeds > 1
        else ""
    )
    return (
        f"{len(trained)} method(s) trained on `{shared.get('train')}` with the "
        f"{objective or shared.get('objective')} objective {length}, model "
        f"`{shared.get('model')}`; all rows evaluated on the same {n} `{shared.get('validation')}` "
        f"questions with {scoring} scoring.{repeats}"
        + (
            " Cloze scoring reads each option after the question alone, so option order cannot change it:"
            " its permutation-averaged accuracy is its accuracy."
            if scoring == "cloze"
            else ""
        )
    )


def markdown_table(rows: list[dict[str, Any]]) -> str:
    keep = _shown_columns(rows)
    full_header, sets = table_header(rows), transfer_sets(rows)
    header = [full_header[i] for i in keep]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = table_cells(row, sets)
        lines.append("| " + " | ".join(cells[i] for i in keep) + " |")
    return "\n".join(lines)


def markdown_report(results: dict[str, Any]) -> str:
    rows = results["rows"]
    parts = ["## mcqtune compare", "", _setup_sentence(results, rows), "", markdown_table(rows), ""]
    if any(_unpacked(r) for r in rows):
        parts += [UNPACKED_NOTE, ""]
    if not results.get("complete", True):
        parts.insert(2, f"**Partial results** ({len(rows)} of {len(results.get('methods', [])) + 1} rows).\n")
    reading = reading_of_results(results)
    if reading:
        parts += ["**Reading.**", ""] + [f"- {line}" for line in reading] + [""]
    if results.get("command"):
        parts += [f"Command: `{results['command']}`", ""]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------- reading
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
    # Cheapest statistical tie with the best, among methods that at least beat doing nothing.
    tied = [r for r in have if tied_with_best(r, best) and (reference is None or r["accuracy"] > reference)]
    if tied and best in tied:
        cheapest = min(tied, key=lambda r: r[key])
        if tied == [best]:
            parts.append(f"no other method is tied with the best, {best['method']}")
        elif cheapest is best:
            parts.append(f"the best method, {best['method']}, is also the cheapest among those tied with it")
        else:
            parts.append(
                f"cheapest method {_tie_rule(have)} that beats zero-shot: **{cheapest['method']}** "
                f"({cost_fmt(cheapest[key])} vs {cost_fmt(best[key])} for {best['method']}, accuracy "
                f"{fmt_pct(cheapest['accuracy'])} vs {fmt_pct(best['accuracy'])})"
            )
    return f"{label}: " + "; ".join(parts) + "." if parts else None


def reading_of_results(results: dict[str, Any]) -> list[str]:
    """A few sentences computed from the rows: winner, ties, efficiency, letter bias, failures."""
    rows = results["rows"]
    lines: list[str] = []
    zero = next((r for r in rows if r["method"] == ZERO_SHOT and _ok(r)), None)
    trained = [r for r in rows if r["method"] != ZERO_SHOT and _ok(r)]
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
            above = [r for r in trained if r["ci95_low"] > zero["ci95_high"]]
            level = [r for r in trained if ci_overlap(r, zero)]
            below = [r for r in trained if r["ci95_high"] < zero["ci95_low"]]
            parts = []
            if above:
                parts.append(f"clearly better than zero-shot (CIs do not overlap): {_names(above)}")
            if level:
                parts.append(f"not distinguishable from zero-shot: {_names(level)}")
            if below:
                parts.append(f"worse than zero-shot: {_names(below)}")
            lines.append("Against doing nothing: " + "; ".join(parts) + ".")
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
    ok = [r for r in rows if _ok(r)]
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
    if not any(_ok(r) and r["method"] != ZERO_SHOT for r in rows):
        return []
    return ["Pareto-optimal (no other method is both more accurate and cheaper): " + "; ".join(parts) + "."]


# ------------------------------------------------------------------------------------------- plots
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
    zero = next((r for r in rows if r["method"] == ZERO_SHOT and _ok(r)), None)
    baseline = next((r["majority_baseline"] for r in rows if _ok(r)), None)
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
    failed = [r["method"] for r in rows if not _ok(r)]
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
    points = [r for r in rows if _ok(r) and r["method"] != ZERO_SHOT and r.get(key) is not None]
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


# ------------------------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1400px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.3em .45em;text-align:right;white-space:nowrap}
th{background:#f3f3f3;white-space:normal;vertical-align:bottom;max-width:7em}
td:first-child,th:first-child{text-align:left;font-weight:600}
tr.failed td{color:#a00;background:#fff4f4}tr.zero td{background:#f7f7fb}
td.err,td.text{text-align:left;white-space:normal}td.differs{color:#a00;font-weight:600}
.plots figure{margin:0 0 1.5em 0}.plots img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555;max-width:950px}
pre{background:#f6f6f6;padding:.7em;white-space:pre-wrap;word-break:break-all;font-size:.85em}
.note{color:#555;font-size:.9em;max-width:1000px}
.warn{background:#fff6d5;padding:.5em;border:1px solid #e8d48a}
"""


def _inline(md: str) -> str:
    """The reading's tiny Markdown (**bold**, `code`) to HTML, after escaping."""
    out = html.escape(md)
    for marker, tag in (("**", "strong"), ("`", "code")):
        pieces = out.split(marker)
        out = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(pieces))
    return out


def _html_table(rows: list[dict[str, Any]]) -> str:
    keep = _shown_columns(rows)
    full_header, sets = table_header(rows), transfer_sets(rows)
    head = "".join(f"<th>{html.escape(full_header[i])}</th>" for i in keep)
    groups = ""
    if sets:  # a header row naming each column group: in-domain, then one per further data set
        own = sum(1 for i in keep if i < len(TABLE_HEADER))
        groups = (
            f"<tr><th colspan='{own}'>in-domain (validation)</th>"
            + "".join(
                f"<th colspan='{len(TRANSFER_HEADER)}'>transfer: {html.escape(name)}</th>" for name in sets
            )
            + "</tr>"
        )
    body = []
    for row in rows:
        cells = table_cells(row, sets)
        if row.get("status") != "ok":
            body.append(
                f'<tr class="failed"><td>{html.escape(cells[0])}</td>'
                f'<td class="err" colspan="{len(keep) - 1}">{html.escape(cells[1])}</td></tr>'
            )
            continue
        cls = ' class="zero"' if row["method"] == ZERO_SHOT else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(cells[i])}</td>" for i in keep) + "</tr>")
    table = f"<table><thead>{groups}<tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f"<div class='scroll'>{table}</div>"


def _overlap_matrix(rows: list[dict[str, Any]]) -> str:
    ok = [r for r in rows if _ok(r)]
    if len(ok) < 2:
        return ""
    head = "".join(f"<th>{html.escape(r['method'])}</th>" for r in ok)
    body = []
    for a in ok:
        cells = "".join(
            "<td>·</td>"
            if a is b
            else "<td>overlap</td>"
            if ci_overlap(a, b)
            else "<td class='differs'>differs</td>"
            for b in ok
        )
        body.append(f"<tr><td>{html.escape(a['method'])}</td>{cells}</tr>")
    return (
        "<p class='note'>Which 95% CIs overlap (overlap: the difference is not established at this n, a "
        "conservative test; differs: the intervals are disjoint).</p>"
        f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _trial_cell(scores: dict[int, float | None], steps: int) -> str:
    if steps not in scores:
        return ""  # pruned before this rung
    return "failed" if scores[steps] is None else fmt_pct(scores[steps])


def _tuning_table(results: dict[str, Any]) -> str:
    """Every trial of --tune: its dev accuracy after each rung's steps (blank: pruned before that rung)."""
    tuning = results.get("tuning")
    if not tuning:
        return ""
    steps = sorted(
        {int(s) for v in tuning["methods"].values() for t in v["trials"] for s in t["dev_accuracy"]}
    )
    head = "".join(f"<th>dev accuracy after {s} steps</th>" for s in steps)
    body = []
    for method, v in tuning["methods"].items():
        for trial in v["trials"]:
            scores = {int(s): a for s, a in trial["dev_accuracy"].items()}
            mark = " (chosen)" if trial["lr"] == v["chosen"] else ""
            cells = "".join(f"<td>{_trial_cell(scores, s)}</td>" for s in steps)
            body.append(f"<tr><td>{html.escape(method)}</td><td>{trial['lr']:g}{mark}</td>{cells}</tr>")
    dev = tuning["dev"]
    return (
        "<h2>Learning-rate tuning</h2>"
        f"<p class='note'>Dev split: {dev['size']} rows of the training data (seed {dev['seed']}), none "
        f"repeating a validation or further-set question; trials trained on the other {dev['train_rows']} "
        "rows. Successive halving: every candidate trains the first rung's steps, the better half twice as "
        "many; the last rung's dev accuracy picks the learning rate.</p>"
        f"<table><thead><tr><th>method</th><th>lr</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _kv_table(data: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td class='text'>{html.escape(str(v))}</td></tr>"
        for k, v in data.items()
    )
    return f"<table><tbody>{rows}</tbody></table>"


_CAPTIONS = {
    "accuracy_vs_params.png": "Accuracy (95% CI bars) vs trainable parameters, log axis; the solid line "
    "joins the Pareto-optimal methods (none both cheaper and more accurate). Dashed: zero-shot (band: its "
    "CI); dotted: majority-letter baseline.",
    "accuracy_vs_time.png": "Accuracy (95% CI bars) vs training wall time (training steps only); the solid "
    "line joins the Pareto-optimal methods.",
    "peak_memory.png": "Peak memory of each method's own process (RSS on CPU, CUDA max allocated on GPU).",
    "learning_curves.png": "Validation accuracy at each evaluation step (on the learning-curve subset).",
}


def html_report(results: dict[str, Any], plots: list[Path]) -> str:
    rows = results["rows"]
    reading = reading_of_results(results)
    figures = []
    for path in plots:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        caption = _CAPTIONS.get(path.name, path.name)
        figures.append(
            f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    per_method = results.get("per_method", {})
    method_rows = {
        m: f"lr {v['lr'] if v.get('lr') is not None else 'method default'}; "
        f"options {v.get('method_options') or {}}"
        for m, v in per_method.items()
    }
    machine = dict(results.get("machine", {}))
    seconds = results.get("seconds")
    partial = ""
    if not results.get("complete", True):
        partial = (
            f"<p class='warn'>Partial results: {len(rows)} of {len(results.get('methods', [])) + 1} rows "
            "(the run is still going or was interrupted; rerun with --resume).</p>"
        )
    config_text = results.get("config_text")
    config_block = (
        f"<p>--config {html.escape(str(results.get('config_file')))}:</p>"
        f"<pre>{html.escape(config_text)}</pre>"
        if config_text
        else "<p>No --config file (built-in defaults).</p>"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>mcqtune compare</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>mcqtune compare: which fine-tuning method?</h1>",
        partial,
        f"<p>{_inline(_setup_sentence(results, rows))}</p>",
        "<h2>Reading of the results</h2>",
        "<ul>" + "".join(f"<li>{_inline(line)}</li>" for line in reading) + "</ul>",
        "<h2>Results</h2>",
        _html_table(rows),
        "<p class='note'>Accuracy on the final evaluation set with its 95% Wilson interval; majority "
        "baseline = always answering the most frequent gold letter; letter TV = total-variation distance "
        "between predicted and gold letter distributions (0 = no letter bias); train time and tok/s count "
        "the training steps only; peak memory is each method's own process.</p>",
        f"<p class='note'>{html.escape(UNPACKED_NOTE)}</p>" if any(_unpacked(r) for r in rows) else "",
        _overlap_matrix(rows),
        _tuning_table(results),
        "<h2>Plots</h2>",
        '<div class="plots">' + "".join(figures) + "</div>",
        "<h2>Command and configuration</h2>",
        f"<pre>{html.escape(results.get('command') or '(called from Python)')}</pre>",
        "<p>Shared by every method:</p>",
        _kv_table(results.get("shared", {})),
        "<p>Per method (from configs/methods/&lt;name&gt;.yaml unless overridden):</p>",
        _kv_table(method_rows),
        config_block,
        "<h2>Machine and libraries</h2>",
        _kv_table(machine),
        _kv_table(results.get("versions", {})),
        f"<p class='note'>Total compare wall time: {fmt_seconds(seconds)}.</p>" if seconds else "",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"
