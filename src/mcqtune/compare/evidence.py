"""From runs to table rows: seeds folded into mean +- spread, every method tested against the best on the
same questions, and which methods are Pareto-optimal (nothing both cheaper and more accurate).

A *run* row is one training run (or the zero-shot evaluation) as :func:`mcqtune.compare.run_row.build_row`
makes it, with the per-question answers of every data set it was scored on under :data:`ANSWERS`. A
*table* row is one method: its runs' mean, their spread and the paired test against the best method,
in-domain (the validation data) and on every further data set (``transfer``). Pure: rows in, rows out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mcqtune.compare.stats import SIGNIFICANCE_LEVEL, compare_paired, holm_adjust, mean_and_spread, verdict

ZERO_SHOT = "zero-shot"
ANSWERS = "answers"  # run row key: {data set: {"ids": [...], "correct": "0110..."}}; not in results.json
IN_DOMAIN = "validation"  # the ANSWERS key of the validation data the table is scored on
# Per-run numbers a method's row shows as the mean over its seeds.
MEAN_KEYS = ("train_seconds", "train_tokens_per_second", "wall_seconds", "permutation_accuracy", "steps")


def _ok(row: dict[str, Any]) -> bool:
    return row.get("status") == "ok" and row.get("accuracy") is not None


def _mean(values: list[float | None], digits: int = 4) -> float | None:
    return None if not values or any(v is None for v in values) else round(float(np.mean(values)), digits)


def _fold(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, its CI and the majority baseline of one data set over seeds: mean, spread, mean CI."""
    accuracy, spread = mean_and_spread([s["accuracy"] for s in scores])
    baseline = scores[0]["majority_baseline"]
    return {
        "n_eval": scores[0]["n_eval"],
        "accuracy": round(accuracy, 4),
        "accuracy_spread": round(spread, 4),
        "seed_accuracies": [s["accuracy"] for s in scores],
        "ci95_low": _mean([s["ci95_low"] for s in scores]),
        "ci95_high": _mean([s["ci95_high"] for s in scores]),
        "majority_baseline": baseline,
        "accuracy_minus_baseline": None if baseline is None else round(accuracy - baseline, 4),
    }


def _stack(runs: list[dict[str, Any]], data: str) -> tuple[list[str], np.ndarray] | None:
    """The runs' answers on one data set as a (runs, questions) matrix; None if any run lacks them or
    the runs were not scored on the same questions in the same order."""
    saved = [(r.get(ANSWERS) or {}).get(data) for r in runs]
    if not saved or any(s is None for s in saved) or any(s["ids"] != saved[0]["ids"] for s in saved):
        return None
    return saved[0]["ids"], np.array([[c == "1" for c in s["correct"]] for s in saved], dtype=bool)


def method_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from a method's runs (one per seed); failed seeds are counted, not averaged."""
    ok = [r for r in runs if _ok(r)]
    failed = [r for r in runs if not _ok(r)]
    row = dict(ok[0] if ok else runs[0])
    row.pop(ANSWERS, None)
    row.update(seeds=len(runs), seeds_ok=len(ok), runs=[r.get("run_dir") for r in runs])
    if failed and ok:
        row["failed_seeds"] = [f"seed {r.get('seed')}: {r.get('error')}" for r in failed]
    if not ok:
        return row
    row.update(_fold(ok))
    row.update({k: _mean([r.get(k) for r in ok]) for k in MEAN_KEYS})
    row["transfer"] = {name: _fold([r["transfer"][name] for r in ok]) for name in ok[0].get("transfer") or {}}
    row[ANSWERS] = {}
    for data in [IN_DOMAIN, *row["transfer"]]:
        stacked = _stack(ok, data)
        if stacked is not None:
            row[ANSWERS][data] = stacked
    return row


def add_paired_tests(rows: list[dict[str, Any]]) -> str | None:
    """Test every finished row against the best trained method (highest mean accuracy) on the same
    questions, in-domain (``vs_best``) and per further data set (``transfer[name]["vs_best"]``); each
    with a plain-words ``verdict``. The tests of one data set are one family: ``significant`` is decided
    by the Holm-adjusted ``p_holm``. Returns the best method's name (None when no method finished)."""
    trained = [r for r in rows if _ok(r) and r["method"] != ZERO_SHOT]
    if not trained:
        return None
    best = max(trained, key=lambda r: (r["accuracy"], -(r.get("train_seconds") or 0)))
    families: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    for row in rows:
        if row is best or not _ok(row):
            continue
        for data in row.get(ANSWERS, {}):
            mine, theirs = row[ANSWERS][data], best.get(ANSWERS, {}).get(data)
            if theirs is None or mine[0] != theirs[0]:
                continue  # not scored on the same questions: no paired test
            families.setdefault(data, []).append((row, compare_paired(theirs[1], mine[1])))
    for data, family in families.items():
        adjusted = holm_adjust([result.p_value for _, result in family])
        for (row, result), p_holm in zip(family, adjusted, strict=True):
            test = result.to_dict() | {
                "p_holm": round(p_holm, 6),
                "family": len(family),
                "significant": p_holm < SIGNIFICANCE_LEVEL,
                "best": best["method"],
                "verdict": verdict(best["method"], row["method"], result, p_holm),
            }
            if data == IN_DOMAIN:
                row["vs_best"] = test
            else:
                row["transfer"][data]["vs_best"] = test
    best["is_best"] = True
    return best["method"]


def table_rows(runs: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """The table: one row per method in ``order`` that has a run yet, seeds folded, paired tests added;
    the per-question answers are dropped (they stay in each run's directory)."""
    grouped = [[r for r in runs if r["method"] == name] for name in order]
    rows = [method_row(group) for group in grouped if group]
    add_paired_tests(rows)
    for row in rows:
        row.pop(ANSWERS, None)
    return rows


def pareto_front(rows: list[dict[str, Any]], cost: str) -> list[str]:
    """Trained methods no other beats on both accuracy and ``cost`` (lower is better), cheapest first."""
    points = [r for r in rows if _ok(r) and r["method"] != ZERO_SHOT and r.get(cost) is not None]
    front = [
        r
        for r in points
        if not any(
            o[cost] <= r[cost]
            and o["accuracy"] >= r["accuracy"]
            and (o[cost], o["accuracy"]) != (r[cost], r["accuracy"])
            for o in points
        )
    ]
    return [r["method"] for r in sorted(front, key=lambda r: (r[cost], -r["accuracy"]))]
