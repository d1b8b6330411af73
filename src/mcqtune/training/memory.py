"""Why CPU training memory grew with every step, and the setting that keeps it flat.

bf16 matmuls on CPU run through oneDNN via ideep, which keeps the primitives it builds (JIT-compiled
kernels and their buffers) in a per-thread LRU cache keyed by tensor *shape*, ``LRU_CACHE_CAPACITY``
entries long (1024 by default). Training batches are length-grouped, so almost every step has a
sequence length never seen before: every step added a new set of cached primitives and RSS climbed
step after step (fp32 matmuls use MKL, cache nothing, and stayed flat). Measured in docs/PERFORMANCE.md
("Training memory over steps"). A small cache keeps RSS flat; within one step every layer has the same
shapes, so the few entries a step needs are still reused across its layers.

ideep reads the variable once, when torch's CPU library first uses the cache, so it must be in the
environment before any bf16 matmul runs: :func:`limit_primitive_cache` is called when ``mcqtune`` is
imported. A value the user set in the environment wins.
"""

from __future__ import annotations

import os

PRIMITIVE_CACHE_VARIABLE = "LRU_CACHE_CAPACITY"
PRIMITIVE_CACHE_ENTRIES = 64


def limit_primitive_cache() -> None:
    """Bound ideep's shape-keyed primitive cache unless the environment already sets it."""
    os.environ.setdefault(PRIMITIVE_CACHE_VARIABLE, str(PRIMITIVE_CACHE_ENTRIES))
