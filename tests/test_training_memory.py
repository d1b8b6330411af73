"""Training memory must not grow with steps (issue 12): the two settings that keep it flat are in effect.

The RSS measurements themselves (growth over 24 bf16 steps with and without the bounded kernel caches,
RSS kept after freed activation buffers) are limits, so they live in the benchmark (bench/limits.py,
``bench/run.py --only limits``), reported as ratios to their limit; on a loaded machine an RSS bound in a
test fails for reasons that are not mcqtune's. Here: importing mcqtune bounds both kernel caches before
torch loads unless the user set them and fixes glibc's mmap threshold unless the user chose one; freed
activation-sized buffers stay on the heap for reuse (no fresh, page-faulted mapping each time) until
the trainer hands them back after its step (RSS of the test's own process: no load dependence).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mcqtune.training.memory import (
    PRIMITIVE_CACHE_ENTRIES,
    PRIMITIVE_CACHE_VARIABLES,
    keep_activations_on_the_heap,
)

SRC = str(Path(__file__).resolve().parent.parent / "src")
_SCRIPT = """
import json, os, sys
import mcqtune
print(json.dumps({v: os.environ.get(v) for v in sys.argv[1:]}))
"""
BOUNDED = str(PRIMITIVE_CACHE_ENTRIES)


def _import_mcqtune(env: dict[str, str]) -> dict:
    env = {**env, "PYTHONPATH": os.pathsep.join([SRC, env.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *PRIMITIVE_CACHE_VARIABLES],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_mcqtune_bounds_both_kernel_caches():
    env = {k: v for k, v in os.environ.items() if k not in PRIMITIVE_CACHE_VARIABLES}
    assert _import_mcqtune(env) == dict.fromkeys(PRIMITIVE_CACHE_VARIABLES, BOUNDED)


def test_a_cache_size_the_user_set_wins():
    first, second = PRIMITIVE_CACHE_VARIABLES
    env = {k: v for k, v in os.environ.items() if k != second} | {first: "7"}
    assert _import_mcqtune(env) == {first: "7", second: BOUNDED}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_the_heap_threshold_is_set_unless_the_user_chose_one(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "")
    assert keep_activations_on_the_heap() is True
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert keep_activations_on_the_heap() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=131072")
    assert keep_activations_on_the_heap() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_glibc_is_told_to_serve_activations_from_the_heap_and_not_to_trim_it_by_itself(monkeypatch):
    """What mallopt is called with (glibc has no call that reads the settings back): the mmap threshold
    above every activation buffer, the trim threshold as high as mallopt takes (the trainer releases)."""
    from mcqtune.training import memory

    calls = []

    def mallopt(parameter, value):
        calls.append((parameter, value))
        return 1

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "")
    monkeypatch.setattr(memory, "_glibc_function", lambda name: mallopt if name == "mallopt" else None)
    assert memory.keep_activations_on_the_heap() is True
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    assert dict(calls) == {m_mmap_threshold: 64 << 20, m_trim_threshold: 2**31 - 1}


_FREED_SCRIPT = """
import json, os, resource
import mcqtune  # as the CLI does: fixes the heap threshold
import torch
from mcqtune.training.memory import release_freed_memory

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

for _ in range(2):  # torch's first allocations and thread pools, before measuring
    torch.ones(4 * 2**20 // 4).add_(1)
kept, start = [], rss_mib()
for _ in range(5):
    buffer = torch.ones(4 * 2**20 // 4)  # a 4 MiB activation, touched
    kept.append(torch.ones(1000))  # a small block that outlives it, as grads and optimizer states do
    del buffer
held = rss_mib() - start
release_freed_memory()
after_release = rss_mib() - start


def step():  # a forward's activations (120 MiB), touched, then freed by the backward
    activations = [torch.ones(4 * 2**20 // 4) for _ in range(30)]
    del activations

step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()  # the next step reuses the freed pages: glibc did not hand them back by itself
refaulted = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
refaulted_mib = refaulted * os.sysconf("SC_PAGE_SIZE") / 2**20
release_freed_memory()
print(json.dumps({"held": held, "after_release": after_release, "refaulted_mib": refaulted_mib}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_freed_activation_buffers_stay_for_reuse_until_the_step_hands_them_back():
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", _FREED_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rss = json.loads(done.stdout.strip().splitlines()[-1])
    # on the heap, not unmapped: the next buffer reuses these pages without faulting fresh ones in
    assert rss["held"] >= 8, rss  # two of the five 4 MiB buffers' pages, at least (a 1 MiB threshold: 0)
    # and the trainer's release gives (at least two of) them back
    assert rss["held"] - rss["after_release"] >= 8, rss
    # glibc does not trim the heap's top by itself: a step faults in few of the previous step's pages
    assert rss["refaulted_mib"] < 40, rss  # of 120 MiB (glibc trimming above 64 MiB: ~76, on some layouts)


def test_training_releases_the_freed_memory_every_few_steps_after_the_optimizer_step(
    monkeypatch, tiny_model_dir, tokenizer, arc_examples
):
    from mcqtune.config import build_config
    from mcqtune.models import resolve_model
    from mcqtune.prompt import PromptEncoder
    from mcqtune.training import trainer as trainer_module

    config = build_config({"method": "lora", "model": str(tiny_model_dir), "max_steps": 3, "batch_size": 2})
    config.validation = None
    trainer = trainer_module.Trainer(
        config, resolve_model(str(tiny_model_dir)), PromptEncoder(tokenizer), arc_examples[:6]
    )
    releases = []
    monkeypatch.setattr(trainer_module, "release_freed_memory", lambda: releases.append(trainer.steps_taken))
    monkeypatch.setattr(trainer_module, "RELEASE_EVERY_STEPS", 2)
    for _ in range(5):
        trainer.step()
    # every second step, and after its optimizer step (the step is counted by then), not before it
    assert releases == [2, 4]


def test_a_finished_training_run_releases_the_freed_memory(monkeypatch, tiny_model_dir, tmp_path):
    from mcqtune.config import TrainConfig, build_config
    from mcqtune.training import recipe

    releases = []
    monkeypatch.setattr(recipe, "release_freed_memory", lambda: releases.append("released"))
    settings = {"method": "lora", "model": str(tiny_model_dir), "max_steps": 1, "batch_size": 2}
    settings |= {"train": "arc_easy", "train_limit": 4, "output": str(tmp_path / "run")}
    config = build_config(settings, base=TrainConfig(save_steps=None, validation=None))
    recipe.train(config, show_progress=False)
    assert releases == ["released"]
