"""The compare reading against hand-built rows with known paired tests: every sentence pinned to the
numbers it rests on, and no two sentences disagreeing about where a method stands against zero-shot.

The rows are what :func:`mcqtune.compare.evidence.table_rows` makes: Wilson CIs, and on every row but
the best a ``vs_best`` paired test (McNemar exact on hand-chosen disagreement counts, Holm-adjusted over
the table's tests, with its plain-words verdict).
"""

from __future__ import annotations

import re

import pytest

from mcqtune.compare.evidence import ZERO_SHOT
from mcqtune.compare.reading import reading_of_results
from mcqtune.compare.stats import SIGNIFICANCE_LEVEL, PairedComparison, holm_adjust, mcnemar_exact, verdict
from mcqtune.evaluation.metrics import wilson_interval

N = 300  # questions every row was scored on
BASELINE = 0.27


def _row(method: str, right: int, *, params: int, seconds: float, memory: int) -> dict:
    low, high = wilson_interval(right, N)
    accuracy = round(right / N, 4)
    return {
        "method": method,
        "status": "ok",
        "error": None,
        "n_eval": N,
        "accuracy": accuracy,
        "ci95_low": round(low, 4),
        "ci95_high": round(high, 4),
        "majority_baseline": BASELINE,
        "accuracy_minus_baseline": round(accuracy - BASELINE, 4),
        "predicted_letter_distribution": {"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25},
        "gold_letter_distribution": {"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25},
        "letter_tv_distance": 0.0,
        "trainable_params": params,
        "train_seconds": seconds,
        "peak_memory_bytes": memory,
        "scoring": "letter",
        "objective": "letter",
    }


def _results(
    zero_right: int,
    tests: dict[str, tuple[int, int, tuple[float, float]]],
    p_values: dict[str, float] | None = None,
) -> dict:
    """Zero-shot, lora (the best, 141 of 300 right) and prefix (129); ``tests``: per row tested against
    lora, (questions only lora answers right, only that row, the paired bootstrap CI of the
    difference). The p values are McNemar's on those counts unless ``p_values`` sets them by hand."""
    rows = [
        _row(ZERO_SHOT, zero_right, params=0, seconds=0.0, memory=2**29),
        _row("lora", 141, params=4_000_000, seconds=120.0, memory=2 * 2**30),
        _row("prefix", 129, params=50_000, seconds=60.0, memory=2**30),
    ]
    best = rows[1]
    best["is_best"] = True
    tested = [r for r in rows if r["method"] in tests]
    raw = [(p_values or {}).get(r["method"], mcnemar_exact(*tests[r["method"]][:2])) for r in tested]
    for row, p_value, p_holm in zip(tested, raw, holm_adjust(raw), strict=True):
        only_best, only_row, ci = tests[row["method"]]
        result = PairedComparison(
            n=N,
            accuracy_a=best["accuracy"],
            accuracy_b=row["accuracy"],
            only_a_correct=only_best,
            only_b_correct=only_row,
            p_value=p_value,
            difference=(only_best - only_row) / N,
            difference_ci=ci,
        )
        row["vs_best"] = result.to_dict() | {
            "p_holm": round(p_holm, 6),
            "family": len(tested),
            "significant": p_holm < SIGNIFICANCE_LEVEL,
            "best": "lora",
            "verdict": verdict("lora", row["method"], result, p_holm),
        }
    return {"rows": rows}


ISSUE_CASE = {ZERO_SHOT: (36, 15, (0.03, 0.11)), "prefix": (30, 18, (-0.01, 0.09))}


def test_every_sentence_of_the_reading_rests_on_its_numbers():
    """The case the issue found: lora's CI overlaps zero-shot's (41.4-52.6 vs 34.6-45.6) but the paired
    test on the same questions says lora is better (McNemar 36 vs 15: p 0.0046, Holm over two tests
    0.0092); prefix is tied with lora (30 vs 18: p 0.111). Zero-shot's sentence must follow the test."""
    results = _results(120, ISSUE_CASE)
    assert [r["ci95_low"] for r in results["rows"]] == [0.3462, 0.4143, 0.3752]
    assert [r["ci95_high"] for r in results["rows"]] == [0.4564, 0.5265, 0.4866]
    tie = "cheapest method not shown to differ from the best by the paired test that scores above zero-shot"
    assert reading_of_results(results) == [
        "Best accuracy: **lora** 47.0% (95% CI 41.4–52.6, n=300), +7.0 points over zero-shot (40.0%) "
        "and +20.0 over the majority-letter baseline (27.0%).",
        "Not shown to differ from the best by the paired test (Holm, 5%): prefix; behind it: none.",
        "Against doing nothing: better than zero-shot by the paired test (Holm, 5%): lora; "
        "not distinguishable from zero-shot (CIs overlap): prefix.",
        # (47-40) points / 2 GiB = 3.50; prefix (43-40) / 1 GiB = 3.00.
        "Memory: most accuracy gained over zero-shot per GiB of peak memory: **lora** (3.50 points per "
        f"GiB of peak memory; +7.0 points for 2048 MiB); {tie}: **prefix** (1024 MiB vs 2048 MiB for "
        "lora, accuracy 43.0% vs 47.0%).",
        # 7 points / 2 minutes = 3.50; prefix 3 points / 1 minute = 3.00.
        "Time: most accuracy gained over zero-shot per minute of training: **lora** (3.50 points per "
        f"minute of training; +7.0 points for 2.0 min); {tie}: **prefix** (60.0 s vs 2.0 min for lora, "
        "accuracy 43.0% vs 47.0%).",
        # prefix: 3 points / 0.05 million = 60.0; lora 7 / 4 = 1.75.
        "Parameters: most accuracy gained over zero-shot per million trainable parameters: **prefix** "
        f"(60.0 points per million trainable parameters; +3.0 points for 50.00k); {tie}: **prefix** "
        "(50.00k vs 4.00M for lora, accuracy 43.0% vs 47.0%).",
        "Paired tests against the best, **lora**, on the same 300 questions, Holm-adjusted over these 2: "
        "significantly different at 5%: zero-shot; not distinguishable from it: prefix.",
        "lora is better than zero-shot at the 5% level (36 questions only lora answers right, 15 only "
        "zero-shot; McNemar exact p = 0.0046, Holm-adjusted 0.0092, difference +7.0 pts (95% CI +3.0 to "
        "+11.0)).",
        "lora and prefix are not distinguishable at the 5% level (30 questions only lora answers right, "
        "18 only prefix; McNemar exact p = 0.111, Holm-adjusted 0.111, difference +4.0 pts (95% CI -1.0 "
        "to +9.0)).",
        "Pareto-optimal (no other method is both more accurate and cheaper): by trainable parameters: "
        "prefix, lora; by training time: prefix, lora.",
    ]


PLACES = {"better": "above", "clearly better": "above", "not": "level", "worse": "below"}


def _zero_shot_claims(lines: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(what the "Against doing nothing" sentence says of each method, what the paired verdicts say)."""
    against = next(line for line in lines if line.startswith("Against doing nothing: "))
    said = {}
    for part in against.removeprefix("Against doing nothing: ").rstrip(".").split("; "):
        label, names = part.split(": ")
        place = next(v for k, v in sorted(PLACES.items(), key=lambda kv: -len(kv[0])) if label.startswith(k))
        said |= dict.fromkeys(names.split(", "), place)
    tested = {}
    for line in lines:
        if match := re.match(r"(\S+) is better than (\S+) at the 5% level", line):
            winner, loser = match.groups()
            if ZERO_SHOT in (winner, loser):
                tested[loser if winner == ZERO_SHOT else winner] = "below" if winner == ZERO_SHOT else "above"
        elif (match := re.match(r"(\S+) and (\S+) are not distinguishable at the 5% level", line)) and (
            ZERO_SHOT in match.groups()
        ):
            tested[next(m for m in match.groups() if m != ZERO_SHOT)] = "level"
    return said, tested


@pytest.mark.parametrize("zero_right", [100, 120, 135, 150, 170])
@pytest.mark.parametrize("zero_p", [0.004, 0.4])
def test_no_two_sentences_disagree_about_zero_shot(zero_right, zero_p):
    """Zero-shot from well below lora to well above it, its paired test significant or not: the zero-shot
    sentence says of the best what the paired verdict says, and of the other methods what their accuracy
    allows (above only if more accurate, below only if less)."""
    only_lora = max(15, 15 + 141 - zero_right)
    tests = {
        ZERO_SHOT: (only_lora, only_lora - (141 - zero_right), (-0.05, 0.05)),
        "prefix": ISSUE_CASE["prefix"],
    }
    results = _results(zero_right, tests, p_values={ZERO_SHOT: zero_p})
    lines = reading_of_results(results)
    said, tested = _zero_shot_claims(lines)
    assert tested == {"lora": said["lora"]}, lines
    significant = results["rows"][0]["vs_best"]["significant"]
    assert said["lora"] == ("level" if not significant else "above" if zero_right < 141 else "below")
    accuracy = {r["method"]: r["accuracy"] for r in results["rows"]}
    for method, place in said.items():
        if place == "above":
            assert accuracy[method] > accuracy[ZERO_SHOT]
        if place == "below":
            assert accuracy[method] < accuracy[ZERO_SHOT]
    for line in lines:  # "scores above zero-shot" is a point estimate: true of the method it names
        for name in re.findall(r"that scores above zero-shot: \*\*(\S+)\*\*", line):
            assert accuracy[name] > accuracy[ZERO_SHOT]
