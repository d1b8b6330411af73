"""The dev split never overlaps the validation rows; Optuna prunes a bad candidate and keeps the best."""

from __future__ import annotations

import optuna
import pytest

from mcqtune.compare import trials
from mcqtune.compare.plan import CompareSettings, plan_configs
from mcqtune.compare.tuning import carve_dev_split, question_key
from mcqtune.data import MCQExample, bundled_path, load_examples
from mcqtune.search.study import reporting_hook


def test_dev_split_is_seeded_disjoint_and_never_touches_validation():
    train = load_examples(bundled_path("arc_easy", "train")).examples
    validation = load_examples(bundled_path("arc_easy", "validation")).examples
    # Plant validation questions into the training rows (re-cased, re-spaced, options reordered).
    planted = [
        MCQExample(f"dup{i}", "  " + v.question.upper() + " ", tuple(reversed(v.choices)), 0)
        for i, v in enumerate(validation[:30])
    ]
    rows = planted + list(train)
    split = carve_dev_split(rows, 100, seed=7, held_out=validation)
    assert len(split.dev) == 100 and len(split.train) == len(rows) - 100
    assert split.excluded_overlaps >= 30
    held = {question_key(v) for v in validation}
    assert not held & {question_key(e) for e in split.dev}
    assert not {id(e) for e in split.dev} & {id(e) for e in split.train}
    again = carve_dev_split(rows, 100, seed=7, held_out=validation)
    assert [e.id for e in again.dev] == [e.id for e in split.dev]
    other = carve_dev_split(rows, 100, seed=8, held_out=validation)
    assert [e.id for e in other.dev] != [e.id for e in split.dev]


def test_dev_split_too_large_is_an_error():
    rows = [MCQExample(str(i), f"q{i}", ("a", "b"), 0) for i in range(5)]
    with pytest.raises(ValueError, match="lower the dev size"):
        carve_dev_split(rows, 5, seed=0)


def test_tuning_prunes_a_bad_rate_through_optuna_and_picks_the_best(tmp_path, monkeypatch):
    """compare --tune lr's trials are Optuna trials: each reports its dev accuracy at every check (here a
    stand-in for the worker reports a fixed quality per rate), the median pruner stops a rate below the
    median of the finished ones at a check, and the best finished trial picks the rate."""
    quality = {1e-5: 0.40, 1e-4: 0.55, 3e-4: 0.62, 1e-3: 0.50}
    monkeypatch.setattr(trials, "lr_candidates", lambda method: list(quality))
    settings = CompareSettings(
        output=tmp_path, methods=["lora"], overrides={"max_steps": 16, "train_limit": 60}, dev_size=8
    )
    plan = plan_configs(settings)
    ran: list[tuple[float, int]] = []

    def evaluate(specs, done):  # what the runner's workers do, without training: report each check
        for i, (_, _, config, link) in enumerate(specs):
            hook = reporting_hook(link, config.max_steps)
            try:
                for step in range(config.eval_steps, config.max_steps + 1, config.eval_steps):
                    ran.append((config.lr, step))
                    hook(step, {"accuracy": quality[config.lr], "n": 8})
            except optuna.TrialPruned as exc:
                done(i, {"status": "pruned", "error": str(exc)}, None)
                continue
            done(i, {"status": "ok"}, quality[config.lr])

    tuned = trials.tune_learning_rates(settings, plan, evaluate)["methods"]["lora"]
    assert tuned["chosen"] == 3e-4 and plan["configs"]["lora"].lr == 3e-4
    by_lr = {t["lr"]: t for t in tuned["trials"]}
    assert by_lr[1e-3]["state"] == "pruned" and by_lr[1e-3]["dev_accuracy"] == {4: 0.5}  # stopped at 4 of 8
    assert [s for lr, s in ran if lr == 1e-3] == [4]
    assert all(
        by_lr[lr]["state"] == "complete" and set(by_lr[lr]["dev_accuracy"]) == {4, 8}
        for lr in quality
        if lr != 1e-3
    )
    study = optuna.load_study(study_name="compare-lr.lora", storage=trials.storage_url(settings))
    assert sorted(t.params["lr"] for t in study.trials) == sorted(quality)
