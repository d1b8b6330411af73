"""--report-to: a run's settings, curves and results land in TensorBoard and MLflow, read back with the
tools' own readers (TensorBoard's EventAccumulator, MLflow's client); an interrupted run resumes into the
same tracker run; compare logs a parent run with a child per method; a missing or unknown tracker is one
line. W&B runs offline."""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path

import pytest

from mcqtune.cli.main import EXIT_USER_ERROR, main
from mcqtune.tracking import STATE_FILE, TENSORBOARD_DIR

STEPS = 4


def _train_argv(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        str(model_dir),
        "--train",
        "arc_easy",
        "--objective",
        "letter",
        "--output",
        str(out),
        "--max-steps",
        str(STEPS),
        "--batch-size",
        "2",
        "--train-limit",
        "8",
        "--eval-limit",
        "6",
        "--final-eval-limit",
        "6",
        "--eval-steps",
        "2",
        "--quiet",
        *extra,
    ]


@pytest.fixture()
def mlflow_store(tmp_path, monkeypatch):
    # MLflow keeps a SQLite store's artifacts in ./mlruns: the test's own directory, not the checkout
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mcqtune-test")
    return uri


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _mlflow_runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mcqtune-test")
    return client, client.search_runs([experiment.experiment_id])


def test_train_reports_to_tensorboard_and_mlflow(tmp_path, tiny_model_dir, mlflow_store):
    out = tmp_path / "run"
    assert main(_train_argv(tiny_model_dir, out, "--report-to", "tensorboard,mlflow")) == 0

    scalars = _scalars(out / TENSORBOARD_DIR)
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, STEPS + 1))
    assert [step for step, _ in scalars["train/lr"]] == list(range(1, STEPS + 1))
    assert [step for step, _ in scalars["val/accuracy"]] == [0, 2, 4]
    low, high = scalars["val/ci_low"][0][1], scalars["val/ci_high"][0][1]
    assert low <= scalars["val/accuracy"][0][1] <= high and high > low

    client, runs = _mlflow_runs(mlflow_store)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["method"] == "lora" and run.data.params["batch_size"] == "2"
    assert run.data.params["model"] == str(tiny_model_dir)
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in losses) == list(range(1, STEPS + 1))
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["final_accuracy"] == pytest.approx(metrics["validation"]["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "metrics.json"} <= artifacts


def test_an_interrupted_run_resumes_into_the_same_tracker_run(
    tmp_path, tiny_model_dir, mlflow_store, monkeypatch
):
    """Ctrl-C after step 2 (checkpointed), then --resume: one MLflow run, each step logged once."""
    from mcqtune.training.trainer import Trainer

    real_step = Trainer.step
    calls = {"n": 0}

    def step_then_interrupt(self):
        result = real_step(self)
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the run's own stop request: checkpoint, then stop
        return result

    out = tmp_path / "run"
    argv = _train_argv(tiny_model_dir, out, "--report-to", "tensorboard,mlflow", "--save-steps", "2")
    monkeypatch.setattr(Trainer, "step", step_then_interrupt)
    assert main(argv) == 130
    client, runs = _mlflow_runs(mlflow_store)
    assert [r.info.status for r in runs] == ["KILLED"]
    first_id = runs[0].info.run_id
    assert (out / STATE_FILE).is_file()

    monkeypatch.setattr(Trainer, "step", real_step)
    assert main([*argv, "--resume"]) == 0
    client, runs = _mlflow_runs(mlflow_store)
    assert [(r.info.run_id, r.info.status) for r in runs] == [(first_id, "FINISHED")]
    steps = sorted(m.step for m in client.get_metric_history(first_id, "train_loss"))
    assert steps == list(range(1, STEPS + 1))
    tensorboard_steps = [step for step, _ in _scalars(out / TENSORBOARD_DIR)["train/loss"]]
    assert sorted(tensorboard_steps) == list(range(1, STEPS + 1))


def test_unknown_and_missing_trackers_are_one_line(tmp_path, tiny_model_dir, capsys, monkeypatch):
    assert main(_train_argv(tiny_model_dir, tmp_path / "a", "--report-to", "tensorbored")) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    expected = "unknown tracker(s) tensorbored; choose from tensorboard, mlflow, wandb or none"
    assert err == f"error: --report-to: {expected}"

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real_find_spec(name, *a)
    )
    assert main(_train_argv(tiny_model_dir, tmp_path / "b", "--report-to", "mlflow")) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err == "error: --report-to mlflow: not installed; pip install 'mcqtune[tracking]'"
    assert not (tmp_path / "b").exists()  # nothing written


def test_wandb_offline(tmp_path, tiny_model_dir, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert main(_train_argv(tiny_model_dir, out, "--report-to", "wandb")) == 0
    offline = list((out / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))


def test_compare_logs_a_parent_run_and_a_child_per_method(tmp_path, tiny_model_dir, mlflow_store):
    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--methods",
        "lora,ia3",
        "--output",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--eval-steps",
        "2",
        "--eval-limit",
        "6",
        "--final-eval-limit",
        "6",
        "--train-limit",
        "8",
        "--report-to",
        "tensorboard,mlflow",
        "--quiet",
    ]
    assert main(argv) == 0
    client, runs = _mlflow_runs(mlflow_store)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 1
    assert set(children) == {"zero-shot-seed42", "lora-seed42", "ia3-seed42"}
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children.values())
    lora = children["lora-seed42"].data.metrics
    assert 0 <= lora["compare_accuracy"] <= 1 and lora["compare_trainable_params"] > 0
    assert lora["compare_ci95_low"] <= lora["compare_accuracy"] <= lora["compare_ci95_high"]
    assert "report.html" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    # each trained run keeps its own TensorBoard curves
    assert _scalars(out / "runs" / "lora" / TENSORBOARD_DIR)["train/loss"]


def test_search_logs_a_parent_run_and_a_child_per_finished_trial(tmp_path, tiny_model_dir, mlflow_store):
    space = tmp_path / "space.yaml"
    space.write_text("lora:\n  r: {type: int, low: 2, high: 8, log: true}\n")
    argv = [
        "search", "--methods", "lora", "--trials", "2", "--output", str(tmp_path / "search"),
        "--model", str(tiny_model_dir), "--max-steps", "2", "--batch-size", "2", "--eval-steps", "2",
        "--eval-limit", "4", "--final-eval-limit", "4", "--train-limit", "16", "--dev-size", "6",
        "--space", str(space), "--pruner", "none", "--report-to", "tensorboard,mlflow", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    client, runs = _mlflow_runs(mlflow_store)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 1 and set(children) == {"lora-trial0", "lora-trial1"}
    for child in children.values():
        assert 2 <= int(child.data.params["r"]) <= 8  # the trial's drawn settings
        assert 0 <= child.data.metrics["compare_accuracy"] <= 1
    assert "report.html" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    trial_dirs = sorted((tmp_path / "search" / "trials").glob("*/trial-*"))
    assert len(trial_dirs) == 2 and all(_scalars(d / TENSORBOARD_DIR)["train/loss"] for d in trial_dirs)
