"""A compare a researcher can trust (issue 16 items 1, 2, 3, 5): --tune lr on a dev split carved from the
training data, --seeds with mean/spread and paired tests against the best, --eval-data transfer columns,
--budget time=... and the Pareto fronts. One small end-to-end compare on the tiny model, then units."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import optuna
import pytest

from mcqtune.compare import evidence, reading, trials
from mcqtune.compare import report as cr
from mcqtune.compare.backends import RUN_RECORD
from mcqtune.compare.evidence import ZERO_SHOT
from mcqtune.compare.plan import (
    QUICK_BUDGET,
    RUNS_DIR,
    CompareSettings,
    estimate_seconds,
    off_reference,
    parse_budget,
    plan_configs,
)
from mcqtune.compare.runner import run_compare
from mcqtune.compare.stats import sign_flip_p
from mcqtune.compare.tuning import question_key
from mcqtune.config import ConfigError, TrainConfig, build_config, method_lr_grid
from mcqtune.data import bundled_path, load_examples
from mcqtune.evaluation.metrics import PER_QUESTION, correct_vector
from mcqtune.methods import METHODS, get_method
from mcqtune.methods.lora import LoraMethod

FINAL_N = 12
DEV_N = 8
GRID = [1e-4, 1e-3]  # two candidates: one halving rung at this budget (5 worker processes in all)


@pytest.fixture(scope="module")
def trusted(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("trust") / "cmp"
    settings = CompareSettings(
        output=out,
        methods=["lora"],
        overrides={
            "model": str(tiny_model_dir),
            "max_steps": 2,
            "batch_size": 2,
            "eval_steps": 2,
            "eval_limit": 4,
            "final_eval_limit": FINAL_N,
            "train_limit": 40,
        },
        tune="lr",
        dev_size=DEV_N,
        seeds=2,
        eval_data=["medmcqa", "arc_easy"],  # arc_easy: the validation rows again, through the transfer path
        echo=False,
        command="mcqtune compare --tune lr --seeds 2 --eval-data medmcqa (test)",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trials, "lr_candidates", lambda method: list(GRID))  # a smaller grid: fewer workers
        run_compare(settings)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return out, results, {r["method"]: r for r in results["rows"]}


def test_dev_split_never_overlaps_the_validation_rows(trusted):
    out, results, _ = trusted
    dev_info = results["tuning"]["dev"]
    dev = load_examples(out / trials.TUNE_DIR / trials.DEV_FILE).examples
    trial_train = load_examples(out / trials.TUNE_DIR / trials.DEV_TRAIN_FILE).examples
    assert len(dev) == dev_info["size"] == DEV_N and [e.id for e in dev] == dev_info["dev_ids"]
    assert len(trial_train) == dev_info["train_rows"] == 40 - DEV_N  # carved from the 40 training rows
    # Every validation question (not only the scored ones) and every further-set question is kept out.
    held = load_examples(bundled_path("arc_easy", "validation")).examples
    held += load_examples(bundled_path("medmcqa", "validation")).examples
    assert not {question_key(e) for e in dev} & {question_key(e) for e in held}
    assert not {e.id for e in dev} & {e.id for e in trial_train}
    # The rows the final table scored, by id, are validation rows; none is a dev row.
    metrics = json.loads((out / RUNS_DIR / "lora" / "metrics.json").read_text(encoding="utf-8"))
    scored_ids, _ = correct_vector(metrics["validation"])
    assert len(scored_ids) == FINAL_N and not set(scored_ids) & set(dev_info["dev_ids"])
    # Each trial trained on the trial rows and was scored on the dev split, not on validation, and only
    # there: no further set (a trial's data format is the dev files', which a further set need not share).
    for lr in GRID:
        trial_dir = out / RUNS_DIR / trials.TUNE_DIR / "lora" / f"lr{lr:g}-steps1"
        record = json.loads((trial_dir / RUN_RECORD).read_text(encoding="utf-8"))
        assert record["status"] == "ok" and "transfer" not in record, record.get("error")
        trial = json.loads((trial_dir / "metrics.json").read_text(encoding="utf-8"))
        assert trial["data"]["validation"].endswith(trials.DEV_FILE)
        assert trial["data"]["train"].endswith(trials.DEV_TRAIN_FILE)
        assert trial["validation"]["n"] == DEV_N and trial["train"]["steps"] == 1


def test_chosen_lr_is_the_best_dev_score_and_is_shown(trusted):
    out, results, rows = trusted
    tuned = results["tuning"]["methods"]["lora"]
    final_scores = {t["lr"]: t["dev_accuracy"]["1"] for t in tuned["trials"]}
    assert tuned["grid"] == GRID and set(final_scores) == set(GRID)
    assert all(0 <= score <= 1 for score in final_scores.values()), final_scores  # no trial failed
    best = max(GRID, key=lambda lr: (final_scores[lr], -GRID.index(lr)))  # ties keep the earlier
    assert tuned["chosen"] == best == rows["lora"]["lr"] and rows["lora"]["lr_tuned"]
    runs = {r["run_dir"]: r for r in results["runs"]}
    assert all(r["lr"] == best for r in runs.values() if r["method"] == "lora")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert f"{best:g} (tuned)" in md and f"lora **{best:g}**" in md
    assert f"Chosen at the {'largest' if best == max(GRID) else 'smallest'} value of its grid: lora" in md
    assert "Learning-rate tuning" in (out / "report.html").read_text(encoding="utf-8")


def test_tuning_trials_are_optuna_trials(trusted):
    _, results, _ = trusted
    study = optuna.load_study(study_name="compare-lr.lora", storage=results["tuning"]["storage"])
    assert sorted(t.params["lr"] for t in study.trials) == sorted(GRID)
    for trial in study.trials:  # one check at the trial's single step, which is also its final score
        assert trial.state.name == "COMPLETE" and trial.intermediate_values == {1: trial.value}


def test_a_rate_chosen_at_the_edge_of_its_grid_is_pointed_out():
    dev = {"size": 8, "seed": 42, "excluded_overlaps": 0, "train_rows": 32}
    methods = {
        "lora": {"grid": [1e-4, 3e-4, 1e-3], "chosen": 1e-3},
        "adapter": {"grid": [1e-4, 3e-4, 1e-3], "chosen": 3e-4},
        "subset": {"grid": [1e-5, 3e-5], "chosen": 1e-5},
    }
    edges = list(reading._tuning_lines({"tuning": {"dev": dev, "methods": methods}}))[1:]
    assert [line.split(";")[0] for line in edges] == [
        "Chosen at the largest value of its grid: lora",
        "Chosen at the smallest value of its grid: subset",
    ]  # adapter's pick is inside its grid


def test_seeds_give_mean_and_spread(trusted):
    out, results, rows = trusted
    lora = rows["lora"]
    seeds = [r for r in results["runs"] if r["method"] == "lora"]
    assert [r["seed"] for r in seeds] == [42, 43] and lora["seeds"] == lora["seeds_ok"] == 2
    assert (out / RUNS_DIR / "lora").is_dir() and (out / RUNS_DIR / "lora-seed43").is_dir()
    accuracies = [r["accuracy"] for r in seeds]
    assert lora["seed_accuracies"] == accuracies
    assert lora["accuracy"] == pytest.approx(np.mean(accuracies), abs=1e-4)
    assert lora["accuracy_spread"] == pytest.approx(np.std(accuracies, ddof=1), abs=1e-4)
    assert rows[ZERO_SHOT]["seeds"] == 1  # zero-shot does not depend on the seed
    md = (out / "report.md").read_text(encoding="utf-8")
    assert f"{lora['accuracy'] * 100:.1f}% ± {lora['accuracy_spread'] * 100:.1f}" in md
    assert "Each method trained 2 times (seeds 42–43)" in md


def test_every_method_is_tested_against_the_best_on_the_same_questions(trusted):
    out, _, rows = trusted
    assert rows["lora"].get("is_best") and "vs_best" not in rows["lora"]
    test = rows[ZERO_SHOT]["vs_best"]
    assert test["best"] == "lora" and test["n"] == FINAL_N and test["runs"] == 2

    # Recompute the test from the per-question answers saved in the run directories: per question, the
    # mean over the two run pairs of (best right) - (zero-shot right).
    def answers(name: str) -> np.ndarray:
        metrics = json.loads((out / RUNS_DIR / name / "metrics.json").read_text(encoding="utf-8"))
        return correct_vector(metrics["validation"])[1]

    best = np.stack([answers("lora"), answers("lora-seed43")])
    per_question = best.mean(axis=0) - answers(ZERO_SHOT)
    assert test["only_a_correct"] == int((per_question > 0).sum())
    assert test["only_b_correct"] == int((per_question < 0).sum())
    assert test["p_value"] == pytest.approx(sign_flip_p(per_question), abs=1e-6)
    assert test["p_holm"] >= test["p_value"] and test["significant"] == (test["p_holm"] < 0.05)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "Paired tests against the best, **lora**" in md and test["verdict"] in md


def test_transfer_scores_the_same_way_as_the_validation(trusted):
    """Scored as a further set, the validation data gives every run exactly its in-domain answers."""
    _, results, rows = trusted
    for run in results["runs"]:
        again = run["transfer"]["arc_easy"]
        assert again["accuracy"] == run["accuracy"] and again["n_eval"] == run["n_eval"], run["run_dir"]
    assert (
        rows[ZERO_SHOT]["transfer"]["arc_easy"]["vs_best"]["only_a_correct"]
        == rows[ZERO_SHOT]["vs_best"]["only_a_correct"]
    )


def test_transfer_columns_have_their_own_baseline_and_ci(trusted):
    out, _, rows = trusted
    medmcqa = load_examples(bundled_path("medmcqa", "validation")).examples[:FINAL_N]
    counts = np.bincount([e.answer for e in medmcqa])
    for name in (ZERO_SHOT, "lora"):
        scores = rows[name]["transfer"]["medmcqa"]
        assert scores["n_eval"] == FINAL_N
        assert scores["majority_baseline"] == pytest.approx(counts.max() / FINAL_N, abs=1e-4)
        assert scores["ci95_low"] <= scores["accuracy"] <= scores["ci95_high"]
    assert rows[ZERO_SHOT]["transfer"]["medmcqa"]["vs_best"]["best"] == "lora"
    record = json.loads((out / RUNS_DIR / "lora" / "compare_run.json").read_text(encoding="utf-8"))
    assert len(record["transfer"]["medmcqa"][PER_QUESTION]["ids"]) == FINAL_N
    md = (out / "report.md").read_text(encoding="utf-8")
    assert (
        "medmcqa: accuracy" in md and "medmcqa: majority baseline" in md and "Transfer to **medmcqa**" in md
    )
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "in-domain (validation)" in html and "transfer: medmcqa" in html


# ------------------------------------------------------------------------------------------- budgets
@pytest.mark.parametrize(
    ("text", "seconds"),
    [(None, None), ("steps", None), ("time=5m", 300.0), ("time=90s", 90.0), ("time=1h", 3600.0)],
)
def test_parse_budget(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["time=", "time=-3m", "time=abc", "wall=5m", "5m"])
def test_parse_budget_rejects_nonsense(text):
    with pytest.raises(ConfigError, match="--budget"):
        parse_budget(text)


def test_time_budget_stops_a_run(tiny_model_dir, tmp_path):
    from mcqtune.training.recipe import train

    config = build_config(
        {
            "model": str(tiny_model_dir),
            "train": "arc_easy",
            "validation": "arc_easy",
            "output": str(tmp_path / "run"),
            "max_steps": 100_000,
            "max_train_seconds": 0.3,
            "batch_size": 2,
            "train_limit": 16,
            "eval_limit": 2,
            "final_eval_limit": 2,
            "eval_steps": 100_000,
            "precision": "fp32",
        },
        base=TrainConfig(save_steps=None),  # no checkpoints (a flag of None reads as not given)
    )
    result = train(config, show_progress=False)
    done = result.metrics["train"]
    assert 1 <= done["steps"] < 100_000 and done["planned_steps"] == 100_000
    assert done["seconds"] >= 0.3 and done["examples_seen"] == done["steps"] * 2
    # Validated where it stopped, so the kept (best) state is one it trained.
    assert result.history[-1]["step"] == done["steps"] and "val_accuracy" in result.history[-1]


# The measured per-method speeds are for bf16 on a CPU with native bf16: asked for explicitly, so these
# tests hold on any CPU.
ON_REFERENCE = {"precision": "bf16"}


def test_time_budget_gives_each_method_the_steps_that_fit(tmp_path):
    settings = CompareSettings(
        output=tmp_path, methods=["full", "subset"], quick=True, time_budget=120.0, overrides=ON_REFERENCE
    )
    plan = plan_configs(settings)
    for name, config in plan["configs"].items():
        assert config.max_train_seconds == 120.0
        assert config.max_steps == math.ceil(120.0 / get_method(name).step_seconds)
    assert plan["configs"]["subset"].max_steps > plan["configs"]["full"].max_steps  # faster: more steps


def test_estimate_counts_trials_seeds_and_further_sets(tmp_path):
    base = CompareSettings(output=tmp_path, methods=["lora"], quick=True, overrides=ON_REFERENCE)
    plain = estimate_seconds(plan_configs(base), base)
    bigger = dataclasses.replace(base, tune="lr", seeds=2, eval_data=["medmcqa"])
    assert plain and estimate_seconds(plan_configs(bigger), bigger) > 2 * plain


def test_no_estimate_and_no_speed_based_steps_in_fp32(tmp_path):
    """fp32 runs 4x slower than the bf16 speeds were measured at: no estimate rather than a wrong one,
    and a time budget keeps --max-steps as its ceiling (the deadline still stops each run)."""
    fp32 = CompareSettings(output=tmp_path, methods=["lora"], quick=True, overrides={"precision": "fp32"})
    plan = plan_configs(fp32)
    assert "fp32" in off_reference(plan["zero_shot"])
    assert estimate_seconds(plan, fp32) is None
    timed = plan_configs(dataclasses.replace(fp32, time_budget=120.0))["configs"]["lora"]
    assert timed.max_steps == QUICK_BUDGET["max_steps"] and timed.max_train_seconds == 120.0


# ------------------------------------------------------------------------------------------- grids
def test_every_method_yaml_has_an_lr_grid_around_its_own_lr():
    from mcqtune.config import method_defaults

    for name in METHODS:
        grid = method_lr_grid(name)
        assert len(grid) >= 2 and grid == sorted(grid)
        assert grid[0] <= method_defaults(name)["lr"] <= grid[-1]
        assert "lr_grid" not in method_defaults(name)  # not a training key


class _NoGrid(LoraMethod):
    name = "nogrid"


def test_a_method_without_a_grid_is_a_clear_error_with_tune(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "nogrid", _NoGrid())
    plan_configs(CompareSettings(output=tmp_path, methods=["nogrid"]))  # untuned: fine
    with pytest.raises(ConfigError, match=r"configs/methods/nogrid.yaml: no 'lr_grid'"):
        plan_configs(CompareSettings(output=tmp_path, methods=["nogrid"], tune="lr"))


def test_trial_schedule_checks_every_quarter_up_to_half():
    config = build_config({"output": "x", "max_steps": 16})
    assert trials.halving_budgets(config) == (4, 8)
    assert trials.trial_steps(config, 3) == [8, 8, 8]  # at most: the pruner only shortens a trial


# ------------------------------------------------------------------------------------------- evidence
def _run(method, seed, correct, **extra):
    ids = [f"q{i}" for i in range(len(correct))]
    acc = sum(correct) / len(correct)
    return {
        "method": method,
        "status": "ok",
        "seed": seed,
        "run_dir": f"runs/{method}-{seed}",
        "n_eval": len(correct),
        "accuracy": acc,
        "ci95_low": acc - 0.1,
        "ci95_high": acc + 0.1,
        "majority_baseline": 0.25,
        "train_seconds": 10.0,
        "transfer": {},
        evidence.ANSWERS: {
            evidence.IN_DOMAIN: {"ids": ids, "correct": "".join("1" if c else "0" for c in correct)}
        },
    } | extra


def test_table_rows_fold_seeds_and_test_against_the_best():
    strong = [1] * 30 + [0] * 10
    weak = [1] * 10 + [0] * 30  # 20 questions only the strong method answers: p = 2 * 0.5**20 per seed pair
    rows = evidence.table_rows(
        [_run(ZERO_SHOT, 42, weak), _run("a", 42, strong), _run("a", 43, strong), _run("b", 42, weak),
         _run("b", 43, [1] * 11 + [0] * 29)],
        [ZERO_SHOT, "a", "b"],
    )  # fmt: skip
    by = {r["method"]: r for r in rows}
    assert by["a"]["is_best"] and by["a"]["accuracy"] == 0.75 and by["a"]["accuracy_spread"] == 0.0
    assert by["b"]["accuracy"] == pytest.approx(0.2625) and by["b"]["accuracy_spread"] == pytest.approx(
        0.0177, abs=1e-4
    )
    test = by["b"]["vs_best"]
    # per question: both seeds of a right and b's seeds 1 or 2 of 2 wrong: 20 questions a is ahead on
    assert (test["only_a_correct"], test["only_b_correct"], test["runs"]) == (20, 0, 2)
    zero = by[ZERO_SHOT]["vs_best"]  # its one run pairs with both seeds of a: d = 1 on 20 questions
    assert (zero["only_a_correct"], zero["test"]) == (20, "McNemar exact")
    # Holm over the family of two: the smaller p doubled, the larger kept (never below the smaller's)
    assert test["family"] == zero["family"] == 2
    assert zero["p_value"] < test["p_value"]
    assert zero["p_holm"] == pytest.approx(2 * zero["p_value"], rel=1e-4)
    assert test["p_holm"] == pytest.approx(max(test["p_value"], zero["p_holm"]), rel=1e-4)
    assert test["significant"] and "a is better than b at the 5% level" in test["verdict"]
    assert all(evidence.ANSWERS not in r for r in rows)


def test_pareto_front_keeps_only_undominated_methods():
    rows = [
        {"method": "full", "status": "ok", "accuracy": 0.60, "trainable_params": 100},
        {"method": "lora", "status": "ok", "accuracy": 0.58, "trainable_params": 10},
        {
            "method": "prefix",
            "status": "ok",
            "accuracy": 0.45,
            "trainable_params": 20,
        },  # lora beats it on both
        {"method": "ia3", "status": "ok", "accuracy": 0.50, "trainable_params": 1},
        {"method": ZERO_SHOT, "status": "ok", "accuracy": 0.40, "trainable_params": 0},
    ]
    assert evidence.pareto_front(rows, "trainable_params") == ["ia3", "lora", "full"]
    assert reading._pareto_lines(rows)[0].startswith("Pareto-optimal")


def test_report_says_which_budget_the_methods_had():
    rows = [{"method": "lora", "status": "ok", "accuracy": 0.5, "n_eval": 10, "scoring": "cloze"}]
    shared = {"train": "arc_easy", "max_steps": 150, "batch_size": 4, "grad_accum": 1, "seed": 42}
    timed = cr._setup_sentence({"shared": shared, "budget": {"kind": "time", "seconds": 300.0}}, rows)
    assert "for 5.0 min of training each (as many steps as fit" in timed and "150 steps" not in timed
    stepped = cr._setup_sentence({"shared": shared, "budget": {"kind": "steps"}, "examples_seen": 600}, rows)
    assert "for 150 steps × batch 4" in stepped
