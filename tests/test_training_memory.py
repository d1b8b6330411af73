"""Training memory must not grow with steps (issue 12): the two settings that keep it flat are in effect.

The RSS measurements themselves (growth over 24 bf16 steps with and without the bounded kernel caches,
RSS kept after freed activation buffers) are limits, so they live in the benchmark (bench/limits.py,
``bench/run.py --only limits``), reported as ratios to their limit; on a loaded machine an RSS bound in a
test fails for reasons that are not mcqtune's. Here: importing mcqtune bounds both kernel caches before
torch loads unless the user set them, and fixes glibc's mmap threshold unless the user chose one.
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
    limit_heap_fragmentation,
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
    assert limit_heap_fragmentation() is True
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert limit_heap_fragmentation() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=131072")
    assert limit_heap_fragmentation() is False
