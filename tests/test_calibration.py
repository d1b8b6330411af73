"""Calibrated option probabilities: the temperature fit recovers a known temperature and lowers ECE
without changing any answer; training stores it in the manifest with ECE before/after in metrics.json;
``inference.predictions`` (what ``predict`` prints), ``eval``'s section and ``/v1/answer`` apply it for
a trained artifact and say "uncalibrated score" for the zero-shot base, an artifact trained before
calibration, and debiased scores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mcqtune.artifacts import MANIFEST, METRICS
from mcqtune.cli.main import main
from mcqtune.data import MCQExample
from mcqtune.evaluation.metrics import ScoredExamples
from mcqtune.evaluation.temperature import (
    CALIBRATED,
    KIND_KEY,
    MANIFEST_KEY,
    METRICS_KEY,
    UNCALIBRATED,
    fit_temperature,
    softmax,
    temperature_summary,
)
from mcqtune.inference import Predictor, predictions
from mcqtune.serving.app import ServeSettings, create_app
from mcqtune.serving.engine import open_engine
from mcqtune.serving.registry import ArtifactRegistry

QUESTION = MCQExample("q", "Which is a planet?", ("Mars", "the Sun", "the Moon"), None)


def _synthetic(n: int, true_temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose gold options are drawn from softmax(scores / true_temperature)."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 3, size=(n, 4))
    probabilities = softmax(scores, true_temperature)
    gold = np.array([rng.choice(4, p=p) for p in probabilities])
    return scores, gold


def _scored(scores: np.ndarray, gold: np.ndarray) -> ScoredExamples:
    examples = [MCQExample(str(i), "q", ("a", "b", "c", "d"), int(g)) for i, g in enumerate(gold)]
    return ScoredExamples(examples, scores, "letter", [], 1.0)


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_the_fit_recovers_a_known_temperature(true_temperature):
    scores, gold = _synthetic(4000, true_temperature)
    assert fit_temperature(scores, gold) == pytest.approx(true_temperature, rel=0.1)


def test_scaling_lowers_ece_and_changes_no_answer():
    scores, gold = _synthetic(600, 3.0)  # a softmax at T=1 is overconfident by 3x
    summary = temperature_summary(_scored(scores, gold))
    assert summary["ece_after"] < summary["ece_before"] / 2
    assert summary["nll_after"] < summary["nll_before"]
    assert "cross-fitted" in summary["after_is"]
    calibrated = softmax(scores, summary["temperature"])
    assert (calibrated.argmax(1) == scores.argmax(1)).all()


def test_absent_options_keep_zero_probability():
    scores = np.array([[2.0, 1.0, -np.inf], [0.5, 3.0, 1.0]])
    assert fit_temperature(scores, [0, 1]) > 0
    assert softmax(scores, 2.0)[0, 2] == 0.0


# ------------------------------------------------------------------------------------ with a model


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("calibration") / "lora"
    argv = ["train", "--model", str(tiny_model_dir), "--method", "lora", "--train", "arc_easy"]
    argv += ["--validation", "arc_easy", "--objective", "letter", "--output", str(out), "--lr", "0.05"]
    argv += ["--max-steps", "3", "--batch-size", "2", "--train-limit", "6", "--eval-limit", "4"]
    argv += ["--final-eval-limit", "20", "--eval-steps", "3", "--quiet"]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def old_run(run, tmp_path_factory) -> Path:
    """The same artifact as one trained before calibration existed: no temperature in its manifest."""
    old = tmp_path_factory.mktemp("old") / "lora-old"
    shutil.copytree(run, old)
    manifest = json.loads((old / MANIFEST).read_text())
    del manifest[MANIFEST_KEY]
    (old / MANIFEST).write_text(json.dumps(manifest))
    return old


def test_training_stores_the_temperature_and_ece_before_and_after(run):
    manifest = json.loads((run / MANIFEST).read_text())
    metrics = json.loads((run / METRICS).read_text())
    fit = metrics["validation"][METRICS_KEY]
    assert fit["n"] == metrics["validation"]["n"] == 20
    assert {"ece_before", "ece_after", "nll_before", "nll_after", "temperature"} <= set(fit)
    assert fit["nll_after"] <= fit["nll_before"]
    assert manifest[MANIFEST_KEY] == {"temperature": fit["temperature"], "fitted_on": "arc_easy", "n": 20}


def test_predictions_are_calibrated_only_where_a_temperature_was_fitted(tiny_model_dir, run, old_run):
    predictor = Predictor.open(str(tiny_model_dir), {"new": run, "old": old_run}, precision="fp32")
    temperature = json.loads((run / MANIFEST).read_text())[MANIFEST_KEY]["temperature"]
    new = predictor.score([QUESTION], "new")
    (record,) = predictions(new)
    assert record.calibrated and record.to_dict()[KIND_KEY] == CALIBRATED
    expected = softmax(new.scored.scores[0], temperature)
    assert record.probabilities == pytest.approx(tuple(expected), abs=1e-9)
    (old_record,) = predictions(predictor.score([QUESTION], "old"))
    (zero_shot,) = predictions(predictor.score([QUESTION], None))
    for uncalibrated in (old_record, zero_shot):
        assert not uncalibrated.calibrated and uncalibrated.to_dict()[KIND_KEY] == UNCALIBRATED
    # the same artifact without its temperature: the plain softmax, and the same answer
    assert old_record.probabilities == pytest.approx(tuple(softmax(new.scored.scores[0])), abs=1e-9)
    assert old_record.index == record.index
    debiased = predictor.score([QUESTION] * 3, "new", debias_prior=True, calibration_size=3)
    assert {p.probability_kind for p in predictions(debiased)} == {UNCALIBRATED}


def test_eval_says_which_kind_its_probabilities_are(tiny_model_dir, run, arc_examples):
    predictor = Predictor.open(str(tiny_model_dir), {"new": run}, precision="fp32")
    calibrated = predictor.score(arc_examples[:10], "new").sections[METRICS_KEY]
    assert calibrated[KIND_KEY] == CALIBRATED and calibrated["calibration_after"]["n"] == 10
    zero_shot = predictor.score(arc_examples[:10], None).sections[METRICS_KEY]
    assert zero_shot[KIND_KEY] == UNCALIBRATED and "not calibrated" in zero_shot["note"]


def test_serve_answers_say_calibrated_or_uncalibrated(tiny_model_dir, run, old_run, capsys):
    registry = ArtifactRegistry(open_engine(str(tiny_model_dir), "fp32", 16), {"new": run, "old": old_run})
    registry.load_named()
    body = {"question": QUESTION.question, "choices": list(QUESTION.choices)}
    with TestClient(create_app(registry, ServeSettings())) as client:
        kinds = {
            name: client.post("/v1/answer", json={**body, "adapter": name}).json()
            for name in ("new", "old", None)
        }
    assert kinds["new"][KIND_KEY] == CALIBRATED
    assert kinds["old"][KIND_KEY] == kinds[None][KIND_KEY] == UNCALIBRATED
    argv = ["predict", "--model", str(tiny_model_dir), "--precision", "fp32", "--json", "--adapter", str(run)]
    argv += ["--question", QUESTION.question, *[x for c in QUESTION.choices for x in ("--choice", c)]]
    capsys.readouterr()
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed[KIND_KEY] == CALIBRATED
    assert list(printed["probabilities"].values()) == pytest.approx(kinds["new"]["probabilities"], abs=1e-4)


def test_predict_prints_which_kind_its_percentages_are(tiny_model_dir, run, capsys):
    question = ["--question", QUESTION.question, *(f"--choice={c}" for c in QUESTION.choices)]
    base = ["predict", "--model", str(tiny_model_dir), "--precision", "fp32", *question]
    assert main([*base, "--run", str(run)]) == 0
    temperature = json.loads((run / MANIFEST).read_text())[MANIFEST_KEY]["temperature"]
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[1]
        == f"probabilities: calibrated (temperature {temperature:.3g}, fitted on the run's validation split)"
    )
    assert main(base) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("probabilities: uncalibrated scores")
