"""What every benchmark section shares: the settings (full or --quick), the targets, the machine and the
in-process context (resolved model, tokenizer, encoder, data rows)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

SECTIONS = ("peak", "trl", "train", "cloze", "eval", "memory", "memory_curve", "startup", "lm_eval")
TARGETS = {
    "train_ratio": 3.0,
    "accuracy_points": 1.0,
    "mfu": 0.50,
    "cloze_ratio": 2.0,
    "cloze_max_abs": 1e-3,
    "eval_ratio": 20.0,
    "qlora_frozen_ratio": 0.35,
    "cached_load_seconds": 3.0,
    "rss_growth": 1.10,
}


@dataclass(frozen=True)
class Settings:
    matmul_sizes: tuple[int, ...]
    matmul_seconds: float
    matmul_rounds: int
    batch_size: int  # training questions per step, every training measurement
    train_steps: int  # section 1: steps of each recipe (both see steps x batch_size examples)
    train_budget_seconds: float  # section 1 stops both recipes after the step that crosses this
    val_rows: int  # section 1: validation rows for the accuracy check
    warmup_steps: int  # excluded from rates
    cloze_equal_rows: int  # section 3: rows for the fp32 equality check
    cloze_eval_rows: int  # section 3: rows for eval questions/s
    cloze_train_steps: int  # section 3: ranking steps per side
    eval_rows: int  # section 4
    eval_chunk: int  # section 4: questions per interleaved chunk (= letter scoring's batch)
    memory_steps: int  # section 5: train() steps per method
    naive_memory_steps: int
    memory_methods: tuple[str, ...] | None  # None: every registered method (+ lora at fp32)
    curve_steps: int  # section memory_curve: Trainer steps per method, RSS after each
    curve_early_step: int  # ... compared with the last step's RSS
    curve_runs: tuple[tuple[str, str, int], ...]  # (method, objective, batch size), each its own process
    trl_steps: int  # section trl: LoRA steps of both whole-process recipes
    trl_batch_size: int
    trl_val_rows: int  # ... letter-scored validation rows of both artifacts afterwards
    # ... steps of the "TRL at its defaults" run where its precision differs from the equal-precision one
    # (emulated bf16 on an AVX2 CPU: minutes a step), its wall time extrapolated to trl_steps
    trl_default_steps: int
    lm_eval_rows: int  # section lm_eval: MedMCQA validation rows scored by both tools
    startup_limit: int  # section 6: rows evaluated
    startup_cached_runs: int  # the cached case is run this many times, best kept
    # section trl: the precision both recipes train in; None: the one mcqtune resolves on this host. fp32
    # on an AVX-512-bf16 host measures the recipes at the precision AVX2 hosts train in (issue 29).
    trl_precision: str | None = None


FULL = Settings(
    matmul_sizes=(2048, 4096),
    matmul_seconds=1.0,
    matmul_rounds=3,
    batch_size=4,
    train_steps=16,
    train_budget_seconds=300.0,
    val_rows=200,
    warmup_steps=2,
    cloze_equal_rows=64,
    cloze_eval_rows=128,
    cloze_train_steps=8,
    eval_rows=64,
    eval_chunk=16,
    memory_steps=4,
    naive_memory_steps=2,
    memory_methods=None,
    curve_steps=200,
    curve_early_step=20,
    curve_runs=(
        ("lora", "letter", 8),
        ("full", "letter", 4),
        ("adapter", "letter", 4),
        ("lora", "ranking", 4),
    ),
    trl_steps=60,
    trl_batch_size=8,
    trl_val_rows=500,
    trl_default_steps=2,
    lm_eval_rows=100,
    startup_limit=16,
    startup_cached_runs=2,
)
QUICK = Settings(
    matmul_sizes=(1024,),
    matmul_seconds=0.2,
    matmul_rounds=2,
    batch_size=1,
    train_steps=3,
    train_budget_seconds=60.0,
    val_rows=16,
    warmup_steps=1,
    cloze_equal_rows=8,
    cloze_eval_rows=16,
    cloze_train_steps=2,
    eval_rows=8,
    eval_chunk=8,
    memory_steps=1,
    naive_memory_steps=1,
    memory_methods=("lora", "qlora"),
    curve_steps=25,
    curve_early_step=5,
    curve_runs=(("lora", "letter", 8),),
    trl_steps=3,
    trl_batch_size=2,
    trl_val_rows=16,
    trl_default_steps=1,
    lm_eval_rows=8,
    startup_limit=4,
    startup_cached_runs=1,
)


class Context:
    """What the in-process sections share: the resolved model, tokenizer, encoder and data rows."""

    def __init__(self, settings: Settings, out_dir: Path):
        from mcqtune.models import load_tokenizer, resolve_model
        from mcqtune.prompt import PromptEncoder

        self.settings = settings
        self.out_dir = out_dir
        self.resolved = resolve_model(None)
        self.tokenizer = load_tokenizer(self.resolved)
        self.encoder = PromptEncoder(self.tokenizer)
        self.cpu = __import__("torch").device("cpu")
        from mcqtune.models import resolve_precision

        # What mcqtune's `auto` uses here: bf16 where the CPU has it natively, fp32 where bf16 would be
        # emulated (AVX2 hosts: ~100x slower). The timed mcqtune sides run in it.
        self.precision = resolve_precision("auto", self.cpu)
        self._rows: dict[tuple[str, str, int], list] = {}
        self.compile_lever = False
        self.peak_gflops: dict[str, float] | None = None  # the matmul peak, once a section measured it
        from bench.naive import GENERATE_MAX_NEW_TOKENS

        self.generate_tokens = GENERATE_MAX_NEW_TOKENS

    def rows(self, dataset: str, split: str, n: int) -> list:
        from mcqtune.data import bundled_path, load_examples

        key = (dataset, split, n)
        if key not in self._rows:
            self._rows[key] = load_examples(bundled_path(dataset, split), limit=n).examples
        return self._rows[key]

    def lora_config(self, objective: str, steps: int):
        from mcqtune.config import build_config

        config = build_config(
            {
                "method": "lora",
                "objective": objective,
                "max_steps": steps,
                "batch_size": self.settings.batch_size,
                "precision": "auto",
                # The naive recipe sees the options in the data's order: so does mcqtune here, so that
                # both recipes train on identical inputs and the accuracy check compares like with like.
                "shuffle_options": False,
            }
        )
        config.validation = None
        return config


def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text()
        bf16 = "avx512_bf16" in flags
    except OSError:
        bf16 = False
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "avx512_bf16": bf16,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
