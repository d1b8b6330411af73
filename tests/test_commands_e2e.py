"""Commands end to end through the entry point (``mcqtune.cli.main.main`` or ``python -m mcqtune``), on
the tiny random Llama unless the command can only use the bundled model (``demo``: marked slow).

What each run asserts is read back from what the command wrote: the learning rate every step recorded
(warm-up, cosine, constant), the steps an ``--epochs`` run took, ``compare``'s rows for several seeds
under a time budget and a method stopped by ``--method-timeout``, the prior ``eval`` estimated on
``--calibration-data``, and ``serve --no-batching`` answering every question in a pass of its own.
Gradient clipping is checked on the trainer's own step (the run's history records no gradient norm).
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import write_jsonl
from mcqtune.cli.main import main
from mcqtune.config import build_config
from mcqtune.data import MCQExample
from mcqtune.models import load_tokenizer, resolve_model
from mcqtune.prompt import PromptEncoder
from mcqtune.training.trainer import Trainer

QUESTION = {"question": "Which colour is the sky?", "choices": ["blue", "green", "red"]}


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory) -> Path:
    words = ["red", "blue", "green", "black", "white", "gold", "grey", "pink", "brown", "teal"]
    rows = [
        {"id": f"q{i}", "question": f"Which colour is {i}?", "choices": words[i : i + 4], "answer": i % 4}
        for i in range(6)
    ]
    return write_jsonl(tmp_path_factory.mktemp("rows") / "rows.jsonl", rows)


def train_argv(model_dir: Path, data: Path, output: Path, *extra: str) -> list[str]:
    argv = ["train", "--model", str(model_dir), "--train", str(data), "--validation", str(data)]
    argv += ["--output", str(output), "--batch-size", "2", "--eval-limit", "2", "--final-eval-limit", "2"]
    return [*argv, "--precision", "fp32", "--quiet", *extra]


def recorded_lrs(output: Path) -> list[float]:
    history = json.loads((output / "metrics.json").read_text())["history"]
    steps = [h for h in history if "lr" in h]
    assert [h["step"] for h in steps] == list(range(1, len(steps) + 1))
    return [h["lr"] for h in steps]


# ------------------------------------------------------------------------------------------ schedules
def test_warmup_then_cosine_schedule_is_what_each_step_recorded(tiny_model_dir, rows_file, tmp_path):
    """8 steps, warm-up 25% (2 steps) to lr 1e-3, then half a cosine down to 0: the lr after each step."""
    out = tmp_path / "cosine"
    flags = ["--max-steps", "8", "--eval-steps", "8", "--lr", "1e-3", "--warmup-ratio", "0.25"]
    assert main(train_argv(tiny_model_dir, rows_file, out, *flags, "--scheduler", "cosine")) == 0
    peak, warmup, total = 1e-3, 2, 8
    expected = [
        peak * s / warmup
        if s < warmup
        else peak * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
        for s in range(1, total + 1)
    ]
    assert recorded_lrs(out) == pytest.approx(expected, abs=1e-12)
    assert expected[0] == pytest.approx(peak / 2) and expected[warmup - 1] == peak and expected[-1] == 0


def test_constant_schedule_keeps_the_lr(tiny_model_dir, rows_file, tmp_path):
    out = tmp_path / "constant"
    flags = ["--max-steps", "4", "--eval-steps", "4", "--lr", "3e-4", "--warmup-ratio", "0"]
    assert main(train_argv(tiny_model_dir, rows_file, out, *flags, "--scheduler", "constant")) == 0
    assert recorded_lrs(out) == [3e-4] * 4


def test_epochs_set_the_steps(tiny_model_dir, rows_file, tmp_path):
    """--epochs 2 over 6 rows in batches of 2: 6 steps, 12 examples seen, each row twice."""
    out = tmp_path / "epochs"
    assert main(train_argv(tiny_model_dir, rows_file, out, "--epochs", "2", "--eval-steps", "100")) == 0
    train = json.loads((out / "metrics.json").read_text())["train"]
    assert train["steps"] == train["planned_steps"] == 6
    assert train["examples_seen"] == 12
    assert len(recorded_lrs(out)) == 6


def _step_gradient_norms(model_dir: Path, max_grad_norm: float) -> list[float]:
    """The gradient norm the optimizer applied at each of 3 trainer steps (read when it steps)."""
    config = build_config(
        {
            "method": "lora",
            "model": str(model_dir),
            "max_steps": 3,
            "batch_size": 2,
            "precision": "fp32",
            "lr": 1e-2,
            "max_grad_norm": max_grad_norm,
            "method_options": {"r": 4},
        }
    )
    resolved = resolve_model(str(model_dir))
    rows = [MCQExample(f"q{i}", f"Which colour is {i}?", ("red", "blue", "green"), i % 3) for i in range(2)]
    torch.manual_seed(0)
    trainer = Trainer(config, resolved, PromptEncoder(load_tokenizer(resolved)), rows)
    norms: list[float] = []
    real_step = trainer.optimizer.step

    def step(*args, **kwargs):
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.trainable])).item())
        return real_step(*args, **kwargs)

    trainer.optimizer.step = step
    for _ in range(3):
        trainer.step()
    return norms


def test_gradient_clipping_bounds_the_applied_norm(tiny_model_dir):
    unclipped = _step_gradient_norms(tiny_model_dir, 0.0)  # 0: no clipping
    limit = min(unclipped) / 4
    clipped = _step_gradient_norms(tiny_model_dir, limit)
    assert clipped[0] == pytest.approx(limit, rel=1e-4)  # the same first gradient, scaled down to the limit
    assert all(n <= limit * (1 + 1e-4) for n in clipped), (clipped, limit)


# ------------------------------------------------------------------------------------------- compare
def _compare_argv(model_dir: Path, data: Path, output: Path, *extra: str) -> list[str]:
    argv = ["compare", "--quick", "--model", str(model_dir), "--data", str(data), "--validation", str(data)]
    argv += ["--methods", "lora", "--output", str(output), "--batch-size", "2", "--eval-limit", "2"]
    return [*argv, "--final-eval-limit", "4", "--precision", "fp32", "--quiet", *extra]


def test_compare_command_two_seeds_under_a_time_budget(tiny_model_dir, rows_file, tmp_path):
    """--seeds 2 --budget time=3s: two runs of lora (seed, seed + 1), each stopped by the 3 s budget or
    the step ceiling, and one row for lora that aggregates both."""
    out = tmp_path / "cmp"
    argv = _compare_argv(tiny_model_dir, rows_file, out, "--seeds", "2", "--budget", "time=3s")
    assert main([*argv, "--method-timeout", "600"]) == 0
    results = json.loads((out / "results.json").read_text())
    shared = results["shared"]
    assert results["seeds"] == 2 and results["budget"] == {"kind": "time", "seconds": 3.0}
    assert shared["max_train_seconds"] == 3.0
    runs = [r for r in results["runs"] if r["method"] == "lora"]
    assert sorted(r["seed"] for r in runs) == [shared["seed"], shared["seed"] + 1]
    for run in runs:
        assert run["status"] == "ok", run
        assert run["steps"] == shared["max_steps"] or run["train_seconds"] >= 3.0, run
    (row,) = [r for r in results["rows"] if r["method"] == "lora"]
    assert row["seeds"] == row["seeds_ok"] == 2 and len(row["seed_accuracies"]) == 2
    assert (out / "report.md").is_file() and (out / "report.html").is_file()


def test_compare_command_records_a_method_stopped_by_method_timeout(tiny_model_dir, rows_file, tmp_path):
    out = tmp_path / "cmp"
    code = main(
        [*_compare_argv(tiny_model_dir, rows_file, out, "--max-steps", "100000"), "--method-timeout", "2"]
    )
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["lora"]["status"] == "failed"
    assert rows["lora"]["error"].startswith("timed out after 2 s (--method-timeout)")
    assert code == 0  # a failed method is recorded, not fatal
    assert "timed out after 2 s" in (out / "report.md").read_text()


# ---------------------------------------------------------------------------------------- eval, serve
def test_eval_estimates_its_prior_on_the_calibration_data(tiny_model_dir, rows_file, tmp_path):
    prior_file, metrics_file = tmp_path / "prior.json", tmp_path / "eval.json"
    argv = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--data",
        "arc_easy",
        "--limit",
        "4",
        "--precision",
        "fp32",
    ]
    argv += ["--debias", "--calibration-data", str(rows_file), "--calibration-size", "5"]
    assert main([*argv, "--save-prior", str(prior_file), "--output", str(metrics_file)]) == 0
    prior = json.loads(prior_file.read_text())
    assert prior["source"] == str(rows_file)  # estimated on the calibration file, not the evaluated rows
    assert prior["n_calibration"] == {"4": 5}
    metrics = json.loads(metrics_file.read_text())
    assert metrics["n"] == 4


def test_serve_without_batching_answers_each_question_in_its_own_pass(tiny_model_dir):
    import httpx

    from mcqtune.serving.loadgen import serve_process

    argv = ["--model", str(tiny_model_dir), "--precision", "fp32", "--no-batching"]
    with serve_process(argv, 120) as url, ThreadPoolExecutor(4) as pool:
        post = lambda _: httpx.post(url + "/v1/answer", json=QUESTION, timeout=60)  # noqa: E731
        answers = list(pool.map(post, range(4)))
        batch = httpx.post(url + "/v1/answer/batch", json={"questions": [QUESTION] * 3}, timeout=60)
    assert batch.status_code == 200
    assert [a["batch_size"] for a in batch.json()["answers"]] == [1, 1, 1]  # queued together, scored alone
    assert [a.status_code for a in answers] == [200] * 4
    assert [a.json()["batch_size"] for a in answers] == [1] * 4
    assert all(a.json()["letter"] in ("A", "B", "C") for a in answers)


# ---------------------------------------------------------------------------------------------- demo
@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    """`mcqtune demo --quick`: the demo always uses the bundled model (no --model), so this is slow."""
    assert main(["demo", "--quick", "--output", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "demo_results.json").read_text())["rows"]
    # per dataset: zero-shot letter, zero-shot cloze, LoRA
    assert len(rows) == 6
    table = (tmp_path / "demo_table.txt").read_text()
    assert "arc_easy" in table and "medmcqa" in table
    for dataset in ("arc_easy", "medmcqa"):
        assert (tmp_path / f"lora-{dataset}" / "metrics.json").is_file()
