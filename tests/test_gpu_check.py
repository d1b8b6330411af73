"""The CPU side of bench/gpu_check.py (CI has no GPU): arguments, the configs it trains and estimates with,
the shipped 1B config it benchmarks, and the clean exit without CUDA."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import gpu_check  # noqa: E402


def test_arguments_default_to_out_and_refuse_non_positive_numbers(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    args = gpu_check.parse_args([])
    assert args.output == tmp_path / "gpu_check.json"
    assert (args.steps, args.batch_size) == (30, 8)
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--steps", "0"])


def test_without_cuda_it_exits_cleanly_and_writes_the_summary(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    output = tmp_path / "nested" / "summary.json"
    assert gpu_check.main(["--output", str(output)]) == 0
    captured = capsys.readouterr()
    assert "no CUDA device" in captured.err
    summary = json.loads(output.read_text())
    assert summary["status"] == "no_cuda"
    assert json.loads(captured.out) == summary


@pytest.mark.parametrize(("method", "options"), gpu_check.TRAIN_RUNS)
def test_training_runs_are_valid_configs_sized_for_their_longest_sequence(method, options, tmp_path):
    config = gpu_check.train_config(method, options, steps=2, batch_size=3, output=tmp_path / "run")
    assert config.validation is None and config.train_limit == 6
    assert config.method_options.items() >= options.items()
    longest = gpu_check.longest_sequence(config)
    assert 8 < longest <= config.prompt_config().max_length
    estimate = gpu_check.estimate_for(config, "bf16")
    assert (estimate.method, estimate.max_length, estimate.batch_size) == (method, longest, 3)
    assert estimate.objective == "letter"


def test_paged_8bit_run_is_estimated_with_8bit_state(tmp_path):
    qlora = dict(gpu_check.TRAIN_RUNS)["qlora"]
    config = gpu_check.train_config("qlora", qlora, steps=1, batch_size=2, output=tmp_path / "run")
    estimate = gpu_check.estimate_for(config, "bf16")
    assert estimate.optimizer_bytes < 2.1 * estimate.trainable_params


def test_benchmark_models_load_from_shipped_or_bundled_configs():
    from mcqtune.estimate import load_model_config

    one_billion = load_model_config(gpu_check.ONE_BILLION)
    assert (one_billion.hidden_size, one_billion.num_hidden_layers) == (2048, 16)
    assert load_model_config(gpu_check.BUNDLED_ARCHITECTURE).hidden_size == 576
