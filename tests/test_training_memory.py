"""Training memory must not grow with steps (issue 12): RSS late in a run over RSS early in it.

Each run is a fresh process (the caches that grew are process-wide and read once at start-up, see
mcqtune/training/memory.py), trains the tiny Llama with bf16 autocast on length-grouped MedMCQA
batches (a new sequence length almost every step) and prints its RSS after every step. The second
cause, heap fragmentation, shows with the real model's multi-MiB activations, not the tiny model's;
its guard frees multi-MiB buffers between live small ones, as a training step does, and checks that the
memory goes back to the system.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mcqtune.training.memory import PRIMITIVE_CACHE_VARIABLES, limit_heap_fragmentation

STEPS = 24
EARLY_STEP = 6

_SCRIPT = """
import json, os, sys
import mcqtune  # first, as the CLI does: sets the cache bound before torch loads
from mcqtune.config import build_config
from mcqtune.data import bundled_path, load_examples
from mcqtune.models import load_tokenizer, resolve_model
from mcqtune.prompt import PromptEncoder
from mcqtune.training.trainer import Trainer

model_dir, steps = sys.argv[1], int(sys.argv[2])
resolved = resolve_model(model_dir)
rows = load_examples(bundled_path("medmcqa", "train"), limit=8 * steps).examples
config = build_config({"method": "lora", "objective": "letter", "model": model_dir, "max_steps": steps,
                       "batch_size": 8, "precision": "bf16", "method_options": {"r": 4}})
trainer = Trainer(config, resolved, PromptEncoder(load_tokenizer(resolved)), rows)
page = os.sysconf("SC_PAGE_SIZE")
curve = []
for _ in range(steps):
    trainer.step()
    with open("/proc/self/statm") as f:
        curve.append(int(f.read().split()[1]) * page / 2**20)
print(json.dumps(curve))
"""


def _rss_curve(model_dir: Path, env: dict[str, str]) -> list[float]:
    src = str(Path(__file__).resolve().parent.parent / "src")
    env = {**env, "PYTHONPATH": os.pathsep.join([src, env.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(model_dir), str(STEPS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


bf16_cpu = pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="the growth came from CPU bf16 matmuls"
)


@pytest.mark.slow
@bf16_cpu
def test_training_rss_does_not_grow_with_steps(tiny_model_dir):
    env = {k: v for k, v in os.environ.items() if k not in PRIMITIVE_CACHE_VARIABLES}  # mcqtune's default
    curve = _rss_curve(tiny_model_dir, env)
    assert curve[-1] / curve[EARLY_STEP - 1] < 1.10, curve


@pytest.mark.slow
@bf16_cpu
def test_the_unbounded_cache_is_what_grew(tiny_model_dir):
    """The guard above can fail: with the caches at their default size the same run grows."""
    curve = _rss_curve(tiny_model_dir, {**os.environ, **dict.fromkeys(PRIMITIVE_CACHE_VARIABLES, "1024")})
    assert curve[-1] / curve[EARLY_STEP - 1] > 1.10, curve


_HOLES_SCRIPT = """
import os, sys
if sys.argv[1] == "mcqtune":
    import mcqtune  # as the CLI does
import torch

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

elements = 4 * 2**20 // 4  # a 4 MiB activation
for _ in range(3):
    del_me = torch.ones(elements)  # glibc mmaps these, then raises its threshold to their size
    del del_me
kept, growth = [], 0.0
for _ in range(5):
    before = rss_mib()
    buffer = torch.ones(elements)
    kept.append(torch.ones(1000))  # a small block that outlives it, as parameters' grads and states do
    del buffer
    growth += rss_mib() - before
print(growth)
"""


def _freed_buffer_growth(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _HOLES_SCRIPT, mode], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])


glibc = pytest.mark.skipif(
    not limit_heap_fragmentation() or "MALLOC_MMAP_THRESHOLD_" in os.environ,
    reason="glibc's mmap threshold is what mcqtune sets",
)


@glibc
def test_freed_activation_buffers_go_back_to_the_system():
    """Five 4 MiB buffers freed between small live blocks: with mcqtune's threshold RSS does not keep
    them (without it, below, glibc leaves each as a hole in its heap: the growth over 200 real steps)."""
    assert _freed_buffer_growth("mcqtune") < 1.0
    assert _freed_buffer_growth("plain") >= 16.0  # the guard above can fail
