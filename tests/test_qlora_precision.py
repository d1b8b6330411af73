"""QLoRA's compute dtype follows the run's precision (issue 29): a fixed bf16 was the slow path on a CPU
without native bf16, where every bf16 matmul is emulated; and a CPU run says before training that QLoRA
is slow there."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mcqtune.config import build_config
from mcqtune.methods import get_method
from mcqtune.models import resolve_model
from mcqtune.prompt import PromptEncoder

# What this host would be with AVX2 only: oneDNN, ATen and MKL capped at AVX2 (docs/PERFORMANCE.md).
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def test_auto_compute_dtype_is_the_runs_precision_and_an_explicit_one_is_kept():
    method = get_method("qlora")
    for precision in ("bf16", "fp32"):
        assert method.run_options({"compute_dtype": "auto", "r": 4}, precision) == {
            "compute_dtype": precision,
            "r": 4,
        }
        assert method.run_options({"compute_dtype": "fp16"}, precision) == {"compute_dtype": "fp16"}
    assert get_method("lora").run_options({"r": 4}, "fp32") == {"r": 4}  # other methods: as given
    assert build_config({"method": "qlora"}).method_options["compute_dtype"] == "auto"  # the YAML default


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_qlora_run_computes_in_its_precision_and_records_it(
    precision, tiny_model_dir, tokenizer, arc_examples, caplog
):
    import bitsandbytes as bnb

    from mcqtune.training.trainer import Trainer

    config = build_config(
        {
            "method": "qlora",
            "model": str(tiny_model_dir),
            "train": "arc_easy",
            "max_steps": 1,
            "batch_size": 2,
            "precision": precision,
            "method_options": {"r": 4},
        }
    )
    with caplog.at_level(logging.INFO, logger="mcqtune.methods.qlora"):
        resolved = resolve_model(str(tiny_model_dir))
        trainer = Trainer(config, resolved, PromptEncoder(tokenizer), arc_examples[:4])
    from mcqtune.methods.qlora import cpu_compute_note

    compute = torch.float32 if precision == "fp32" else torch.bfloat16
    dtypes = {m.compute_dtype for m in trainer.unwrapped.modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert dtypes == {compute}
    assert config.method_options["compute_dtype"] == precision  # what the run's manifest records
    # the note for this host: 1.2x LoRA's step, or the 12x warning where bf16 is emulated (AVX2)
    assert cpu_compute_note(compute)[1] in caplog.text
    if precision == "fp32":
        assert "qlora on a CPU: a training step takes about 1.2x LoRA's" in caplog.text
    assert trainer.step().loss > 0


def test_bf16_compute_on_a_cpu_without_native_bf16_is_a_warning_with_the_measured_factor(monkeypatch):
    from mcqtune.methods.qlora import cpu_compute_note

    for native, level in ((True, logging.INFO), (False, logging.WARNING)):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        assert cpu_compute_note(torch.bfloat16)[0] == level
        assert cpu_compute_note(torch.float32)[0] == logging.INFO
    level, text = cpu_compute_note(torch.bfloat16)
    assert "compute_dtype bfloat16 on a CPU without native support" in text and "about 12x" in text


def test_auto_precision_is_fp32_on_a_cpu_capped_at_avx2():
    """The AVX2 emulation the docs use to measure AVX2-only hosts on an AVX-512 one: with the ISA capped,
    ``auto`` resolves to fp32 and QLoRA's default compute dtype with it."""
    script = (
        "import json, torch\n"
        "from mcqtune.models import resolve_precision\n"
        "from mcqtune.methods import get_method\n"
        "p = resolve_precision('auto', torch.device('cpu'))\n"
        "print(json.dumps([p, get_method('qlora').run_options({'compute_dtype': 'auto'}, p)['compute_dtype'],"
        " torch.backends.cpu.get_cpu_capability()]))\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, **AVX2_ONLY, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["fp32", "fp32", "AVX2"]


def test_a_finished_qlora_run_is_reused_by_compare_not_trained_again(tiny_model_dir, tmp_path):
    """The saved config holds ``compute_dtype`` as the run used it; a compare row asking for ``auto`` on
    the same host is the same run, so the worker reuses it instead of training it again."""
    from mcqtune.compare.worker import _reuse_finished_run
    from mcqtune.training.recipe import train

    settings = {
        "method": "qlora",
        "model": str(tiny_model_dir),
        "train": "arc_easy",
        "validation": "arc_easy",
        "eval_limit": 2,
        "final_eval_limit": 2,
        "max_steps": 1,
        "batch_size": 2,
        "precision": "fp32",
        "method_options": {"r": 4},
        "output": str(tmp_path / "run"),
    }
    train(build_config(settings), show_progress=False)
    again = build_config(settings)
    assert again.method_options.get("compute_dtype", "auto") == "auto"
    reused = _reuse_finished_run(again)
    assert reused is not None and reused.output == tmp_path / "run" and reused.model is not None
