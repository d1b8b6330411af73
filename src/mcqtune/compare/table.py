"""The compare table as a reader sees it: every number's formatting and one row's cells.

Every number in report.md, report.html and the reading goes through the ``fmt_*`` helpers below from
``results.json`` rows, so the report and the JSON cannot disagree.
"""

from __future__ import annotations

from typing import Any

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


def is_scored(row: dict[str, Any]) -> bool:
    """A finished row with an accuracy: the rows the reading and the plots can compare."""
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


def is_unpacked(row: dict[str, Any]) -> bool:
    """Cloze scored one row per option (prefix tuning): its tokens/s counts the question K times."""
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
        fmt_rate(row["train_tokens_per_second"], 0) + (UNPACKED_MARK if is_unpacked(row) else ""),
        fmt_mib(row["peak_memory_bytes"]),
        fmt_rate(row["eval_questions_per_second"]),
        *_transfer_cells(row, sets),
    ]


def shown_columns(rows: list[dict[str, Any]]) -> list[int]:
    """Drop the permutation column while nothing fills it (letter scoring run with --permutations none),
    and the paired-test column while there is nothing to test (a single method)."""
    keep = list(range(len(table_header(rows))))
    if all(r.get("permutation_accuracy") is None for r in rows):
        keep.remove(TABLE_HEADER.index("perm. accuracy"))
    if not any(r.get("vs_best") for r in rows):
        keep.remove(TABLE_HEADER.index(P_HEADER))
    return keep
