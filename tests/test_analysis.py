"""Letter bias, option permutations, content-free debiasing, calibration, reports, option shuffling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mcqtune.cli.main import main
from mcqtune.config import ConfigError
from mcqtune.data import MCQExample, bundled_path, load_examples
from mcqtune.errors import PriorError
from mcqtune.evaluation.analysis import (
    option_permutations,
    parse_permutations,
    run_analyses,
    score_permutations,
)
from mcqtune.evaluation.debias import LetterPrior, debias, debias_permuted, estimate_prior
from mcqtune.evaluation.evaluate import score_examples
from mcqtune.evaluation.metrics import (
    PermutedScores,
    ScoredExamples,
    calibration,
    compute_metrics,
    letter_bias,
    permutation_summary,
)
from mcqtune.evaluation.report import write_report
from mcqtune.prompt import PromptEncoder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _examples(answers, k=4):
    return [
        MCQExample(str(i), f"question {i}?", tuple(f"opt{i}-{j}" for j in range(k)), a)
        for i, a in enumerate(answers)
    ]


# ----------------------------------------------------------------------------- permutations


def test_permuted_example_keeps_the_answer_text():
    ex = MCQExample("q", "Which?", ("w", "x", "y", "z"), 2)
    moved = ex.permuted((2, 0, 3, 1))
    assert moved.choices == ("y", "w", "z", "x")
    assert moved.choices[moved.answer] == "y"
    assert MCQExample("u", "?", ("a", "b"), None).permuted((1, 0)).answer is None


def test_option_permutations_cover_positions_and_start_with_the_identity():
    cyclic = option_permutations(4, "cyclic")
    assert cyclic[0] == (0, 1, 2, 3) and len(cyclic) == 4
    # every option visits every position exactly once
    for option in range(4):
        assert sorted(p.index(option) for p in cyclic) == [0, 1, 2, 3]
    assert len(option_permutations(4, "all")) == 24
    random_five = option_permutations(4, 5, seed=3)
    assert random_five[0] == (0, 1, 2, 3) and len(set(random_five)) == 5
    assert random_five == option_permutations(4, 5, seed=3)
    assert len(option_permutations(3, 50)) == 6  # K >= n! gives all of them
    with pytest.raises(ConfigError):
        option_permutations(7, "all")


@pytest.mark.parametrize("bad", ["1", "sometimes", "0"])
def test_parse_permutations_rejects_nonsense(bad):
    with pytest.raises(ConfigError):
        parse_permutations(bad)
    assert parse_permutations("CYCLIC") == "cyclic" and parse_permutations("6") == 6


def test_permuted_scores_are_unpermuted_to_the_original_options(tiny_model, tokenizer, arc_examples):
    encoder = PromptEncoder(tokenizer)
    rows = [e for e in arc_examples if len(e.choices) == 4][:5]
    result = score_permutations(tiny_model, encoder, rows, "letter", "cyclic", batch_size=7)
    assert result.scores.shape == (5, 4, 4)
    plain = score_examples(tiny_model, encoder, rows, "letter")
    np.testing.assert_allclose(result.original().scores, plain.scores, atol=1e-4)
    # order 2, scored on its own: original option i sits at position perm.index(i)
    perm = result.permutations[0][2]
    alone = score_examples(tiny_model, encoder, [r.permuted(perm) for r in rows], "letter")
    for i in range(4):
        np.testing.assert_allclose(result.scores[:, 2, i], alone.scores[:, perm.index(i)], atol=1e-4)


def test_cloze_scoring_is_permutation_invariant(tiny_model, tokenizer, arc_examples):
    rows = arc_examples[:6]
    result = score_permutations(tiny_model, PromptEncoder(tokenizer), rows, "cloze", "cyclic", batch_size=4)
    spread = np.nanmax(result.scores, axis=1) - np.nanmin(result.scores, axis=1)
    finite = np.isfinite(spread)
    assert np.abs(spread[finite]).max() < 1e-4
    summary = permutation_summary(result)
    assert summary["answer_changes_share"] == 0.0
    assert summary["logprob_spread_max"] < 1e-4
    assert summary["accuracy_mean"] == summary["accuracy_circular"] == summary["accuracy_original"]


def test_mixed_option_counts_get_their_own_orders(tiny_model, tokenizer):
    rows = [
        MCQExample("two", "Is water wet?", ("yes", "no"), 0),
        MCQExample("five", "Pick a number.", ("one", "two", "three", "four", "five"), 4),
    ]
    result = score_permutations(tiny_model, PromptEncoder(tokenizer), rows, "letter", "cyclic")
    assert result.valid.sum(axis=1).tolist() == [2, 5]
    assert np.isinf(result.scores[0, :2, 2:]).all()
    summary = permutation_summary(result)
    assert summary["orders_per_question"] == 5 and "accuracy_per_order" not in summary


def _always_position_a(answers, k=4, content=None):
    """A synthetic model: log-scores = position bias (A strongly) + optional content term."""
    examples = _examples(answers, k)
    perms = option_permutations(k, "cyclic")
    bias = np.log(np.array([0.7, 0.1, 0.1, 0.1])[:k])
    scores = np.zeros((len(examples), len(perms), k))
    for q in range(len(examples)):
        for p, perm in enumerate(perms):
            for j, option in enumerate(perm):
                value = bias[j] + (0.0 if content is None else content[q, option])
                scores[q, p, option] = value
    return PermutedScores(examples, [perms] * len(examples), scores, "letter", "cyclic")


def test_summary_of_a_model_that_always_answers_a():
    result = _always_position_a([0, 1, 2, 3, 0, 0])
    s = permutation_summary(result)
    assert s["accuracy_original"] == pytest.approx(0.5)  # the gold letters are A-heavy
    assert s["accuracy_mean"] == pytest.approx(0.25)
    assert s["accuracy_circular"] == 0.0
    assert s["answer_changes_share"] == 1.0
    assert s["accuracy_per_order"] == [
        0.5,
        pytest.approx(0.1667),
        pytest.approx(0.1667),
        pytest.approx(0.1667),
    ]
    assert s["position_bias"]["predicted_distribution"] == {"A": 1.0, "B": 0.0, "C": 0.0, "D": 0.0}
    assert s["position_bias"]["gold_distribution"] == {"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25}
    assert s["position_bias"]["tv_distance"] == 0.75


# ----------------------------------------------------------------------------- debiasing


def test_prior_is_recovered_and_removed_without_labels():
    rng = np.random.default_rng(0)
    content = rng.normal(size=(40, 4))
    answers = content.argmax(axis=1).tolist()  # the content term "knows" the answer
    result = _always_position_a(answers, content=content)
    prior = estimate_prior(result, model="m")
    np.testing.assert_allclose(prior.priors[4], [0.7, 0.1, 0.1, 0.1], atol=1e-9)
    assert prior.n_calibration == {4: 40}
    original = result.original()
    assert compute_metrics(original)["accuracy"] < 1.0
    fixed = debias(original, prior)
    assert compute_metrics(fixed)["accuracy"] == 1.0
    after = permutation_summary(debias_permuted(result, prior))
    assert after["accuracy_circular"] == 1.0 and after["answer_changes_share"] == 0.0


def test_prior_from_random_orders_is_refused():
    result = _always_position_a([0, 1])
    result.mode = 3
    with pytest.raises(PriorError):
        estimate_prior(result)


def test_prior_round_trips_and_checks_what_it_is_applied_to(tmp_path):
    prior = LetterPrior({4: [0.4, 0.3, 0.2, 0.1], 2: [0.5, 0.5]}, "letter", {4: 10, 2: 3}, model="m")
    path = tmp_path / "prior.json"
    prior.save(path)
    loaded = LetterPrior.load(path)
    assert loaded.priors == prior.priors and loaded.n_calibration == prior.n_calibration
    assert loaded.check("letter", "m", None) == []
    assert loaded.check("letter", "other", None)  # a warning, not an error
    with pytest.raises(PriorError):
        loaded.check("cloze")
    path.write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(PriorError):
        LetterPrior.load(path)


def test_debias_leaves_option_counts_without_a_prior_alone():
    scored = ScoredExamples(_examples([0], k=3), np.array([[0.0, -1.0, -2.0]]), "letter", [], 1.0)
    prior = LetterPrior({4: [0.25] * 4}, "letter", {4: 1})
    np.testing.assert_allclose(debias(scored, prior).probabilities, scored.probabilities)


# ----------------------------------------------------------------------------- letter bias, calibration


def test_letter_bias_known_values():
    gold = [0, 0, 0, 1, 2, None]
    pred = [0, 0, 1, 0, 0, 3]
    bias = letter_bias(gold, pred, 4)
    assert bias["n"] == 5
    assert bias["confusion"] == [[2, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    a = bias["per_letter"]["A"]
    assert a["precision"] == 0.5 and a["recall"] == pytest.approx(0.6667, abs=1e-4) and a["predicted"] == 4
    assert bias["per_letter"]["D"]["recall"] is None and bias["per_letter"]["D"]["precision"] is None
    assert bias["per_letter"]["C"]["f1"] is None  # never predicted
    # predicted A:0.8 B:0.2 vs gold A:0.6 B:0.2 C:0.2 -> TV 0.2
    assert bias["tv_distance"] == pytest.approx(0.2)
    assert 0 < bias["kl_divergence"] < math.inf
    assert bias["most_predicted"] == "A" and bias["most_predicted_share"] == 0.8


def test_letter_bias_is_zero_for_matching_distributions():
    bias = letter_bias([0, 1, 2, 3], [1, 0, 3, 2], 4)
    assert bias["tv_distance"] == 0.0 and bias["kl_divergence"] == 0.0


def test_calibration_known_values():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.3, 0.7]])
    cal = calibration(probs, [0, 1, 0, None])
    # labelled: conf .95 right, .95 wrong, .6 right -> bins 9: acc .5 conf .95; bin 5: acc 1 conf .6
    assert cal["n"] == 3
    assert cal["ece"] == pytest.approx((2 * 0.45 + 1 * 0.4) / 3, abs=1e-4)
    brier = ((0.05**2 + 0.05**2) + (0.95**2 + 0.95**2) + (0.4**2 + 0.4**2)) / 3
    assert cal["brier"] == pytest.approx(brier, abs=1e-4)
    assert len(cal["bins"]) == 10 and sum(b["n"] for b in cal["bins"]) == 3
    assert cal["bins"][9]["accuracy"] == 0.5
    assert calibration(probs, [None] * 4) == {"n": 0}


def test_compute_metrics_carries_letter_bias_and_calibration():
    scores = np.tile(np.array([[0.0, -1.0, -2.0, -3.0]]), (5, 1))
    metrics = compute_metrics(ScoredExamples(_examples([0, 0, 0, 1, 2]), scores, "letter", [], 1.0))
    assert metrics["letter_bias"]["confusion"][0] == [3, 0, 0, 0]
    assert metrics["letter_bias"]["tv_distance"] == pytest.approx(0.4)
    assert 0 <= metrics["calibration"]["ece"] <= 1 and metrics["calibration"]["n"] == 5


# ----------------------------------------------------------------------------- reports


def test_report_writes_json_markdown_and_pngs(tmp_path, tiny_model, tokenizer, arc_examples):
    result = run_analyses(
        tiny_model,
        PromptEncoder(tokenizer),
        [e for e in arc_examples if len(e.choices) == 4][:8],
        "letter",
        permutations="cyclic",
        debias_prior=True,
        calibration_size=4,
    )
    metrics = compute_metrics(result.scored) | result.sections
    written = {p.name for p in write_report(tmp_path / "r", metrics, title="tiny")}
    assert written == {
        "metrics.json",
        "summary.md",
        "confusion_matrix.png",
        "letter_distribution.png",
        "reliability.png",
        "permutations.png",
    }
    for name in written - {"metrics.json", "summary.md"}:
        assert (tmp_path / "r" / name).read_bytes()[:8] == PNG_MAGIC
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "circular accuracy" in summary and "Debiasing" in summary and "![reliability]" in summary
    assert (
        json.loads((tmp_path / "r" / "metrics.json").read_text())["debias"]["outside_calibration"]["n"] == 4
    )


# ----------------------------------------------------------------------------- CLI


def test_eval_cli_permutations_debias_and_report(tiny_model_dir, tmp_path, capsys):
    report = tmp_path / "report"
    prior = tmp_path / "prior.json"
    out = tmp_path / "m.json"
    code = main(
        [
            "eval",
            "--model",
            str(tiny_model_dir),
            "--data",
            "medmcqa",
            "--limit",
            "6",
            "--scoring",
            "letter",
            "--permutations",
            "cyclic",
            "--debias",
            "--calibration-size",
            "3",
            "--save-prior",
            str(prior),
            "--output",
            str(out),
            "--report",
            str(report),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    for needle in ("letter bias", "calibration", "confusion", "circular", "debias", "-> "):
        assert needle in text
    metrics = json.loads(out.read_text())
    assert metrics["permutations"]["scored_prompts"] == 24
    assert metrics["debias"]["n_calibration"] == {"4": 3}
    assert (report / "summary.md").is_file() and (report / "confusion_matrix.png").is_file()
    assert LetterPrior.load(prior).scoring == "letter"

    # predict reuses the saved prior for a single question
    code = main(
        [
            "predict",
            "--model",
            str(tiny_model_dir),
            "--scoring",
            "letter",
            "--prior",
            str(prior),
            "--question",
            "Pick one",
            "--choice",
            "a",
            "--choice",
            "b",
            "--choice",
            "c",
            "--choice",
            "d",
            "--json",
        ]
    )
    assert code == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["debiased"] is True and set(record["probabilities"]) == {"A", "B", "C", "D"}
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)


def test_predict_debias_without_a_prior_source_is_a_user_error(tiny_model_dir, capsys):
    code = main(
        [
            "predict",
            "--model",
            str(tiny_model_dir),
            "--debias",
            "--question",
            "q",
            "--choice",
            "a",
            "--choice",
            "b",
        ]
    )
    assert code == 2
    assert "--prior" in capsys.readouterr().err


def test_eval_cli_rejects_a_bad_permutation_mode(tiny_model_dir, capsys):
    code = main(
        ["eval", "--model", str(tiny_model_dir), "--data", "arc_easy", "--limit", "2", "--permutations", "1"]
    )
    assert code == 2
    assert "K >= 2" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_real_model_permutations_and_debias_on_medmcqa(bundled_resolved, tokenizer):
    """The bundled SmolLM2 answers A by position: cyclic orders expose it, the prior removes it."""
    from mcqtune.models import load_model, resolve_precision

    rows = load_examples(bundled_path("medmcqa", "validation"), limit=16).examples
    model = load_model(bundled_resolved).to(torch.device("cpu"))
    result = run_analyses(
        model,
        PromptEncoder(tokenizer),
        rows,
        "letter",
        permutations="cyclic",
        debias_prior=True,
        calibration_size=8,
        precision=resolve_precision("auto", torch.device("cpu")),  # fp32 where bf16 is emulated
    )
    perm = result.sections["permutations"]
    assert perm["scored_prompts"] == 64
    assert perm["position_bias"]["predicted_distribution"]["A"] >= 0.7  # gold is balanced (25% each)
    assert perm["accuracy_circular"] <= perm["accuracy_mean"]
    debiased = result.sections["debias"]
    assert result.prior.priors[4][0] > 0.5  # the model's prior on "A"
    before = debiased["all_rows"]["before"]["predicted_distribution"]["A"]
    after = debiased["all_rows"]["after"]["predicted_distribution"]["A"]
    assert after < before
    assert debiased["permutations_after"]["answer_changes_share"] <= perm["answer_changes_share"]


def test_evaluation_modules_document_their_public_api():
    for function in (letter_bias, permutation_summary, score_permutations, estimate_prior, calibration):
        assert function.__doc__
