"""Why CPU training memory grew with every step, and the two settings that keep it flat.

Two causes, each measured (docs/PERFORMANCE.md, "Training memory over steps"): shape-keyed caches of
compiled matmul kernels, and glibc's heap keeping freed activation buffers.

**Kernel caches.**
bf16 matmuls on CPU run through oneDNN (via ideep), and both keep the primitives they build (JIT-compiled
kernels and their buffers) in caches keyed by tensor *shape*: ideep's per-thread LRU cache
(``LRU_CACHE_CAPACITY``, 1024 entries by default) and oneDNN's own primitive cache
(``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, 1024). Training batches are length-grouped, so almost every step
has a sequence length never seen before and adds a new set of cached primitives: RSS climbed step after
step (fp32 matmuls use MKL, cache nothing, and stayed flat). Bounding only one of the two caches did not
stop the growth; bounding both did (docs/PERFORMANCE.md, "Training memory over steps").

How many entries: one training step of the bundled model at batch 8 needs a few dozen primitives (each
linear shape's forward and backward kernels), so a cache smaller than that rebuilds them layer after
layer; a larger one holds more kernels and their buffers. Measured on SmolLM2-135M, LoRA letter, batch 8,
40 steps (docs/PERFORMANCE.md, "Training memory over steps"): 8 entries 6.1 s/step, 16: 4.4 s, 32:
3.1 s at 2.8-3.3 GiB RSS, 64: 3.0 s at 4.3 GiB, 128: 3.1 s at 5.7 GiB, 1024 (the default): 3.4 s and
growing. 32 is the smallest that costs no speed.

Both libraries read their variable once, when torch's CPU library first needs it, so it must be in the
environment before torch runs a bf16 matmul: :func:`limit_primitive_caches` runs when ``mcqtune`` is
imported. A value the user set in the environment wins.

**Heap fragmentation.** glibc's malloc serves large blocks with ``mmap`` (returned to the system on
``free``) only above a threshold that it *raises* to the size of every mmapped block freed, up to 32 MiB.
After the first step, activation buffers of 1-32 MiB are carved from the heap instead; freed between
live blocks they cannot be returned, and each new batch length leaves holes of new sizes, so RSS crept up
(full fine-tuning +24%, the bottleneck adapter +17% in median over 200 steps with the caches bounded).
:func:`limit_heap_fragmentation` fixes the threshold at 1 MiB, which also stops the raising. Measured
(adapter, 200 steps, batch 4, own process each): default glibc: window maxima 1490 -> 2370 MiB, 182 s;
1 MiB: 1378 MiB in every 50-step window, 137 s; 512 KiB: ~1000 MiB flat but 207 s (every buffer a fresh
zeroed mapping); 4 MiB: 147 s, still rising; jemalloc by ``LD_PRELOAD``: 934 -> 1015 MiB, 148 s;
tcmalloc: 1240 -> 1855 MiB. A threshold the user set (``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES``)
wins; other C libraries (musl, macOS) have no such setting and are left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

PRIMITIVE_CACHE_VARIABLES = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")
PRIMITIVE_CACHE_ENTRIES = 32


def limit_primitive_caches() -> None:
    """Bound the shape-keyed oneDNN/ideep primitive caches unless the environment already sets them."""
    for variable in PRIMITIVE_CACHE_VARIABLES:
        os.environ.setdefault(variable, str(PRIMITIVE_CACHE_ENTRIES))


MMAP_THRESHOLD_BYTES = 1 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)


def limit_heap_fragmentation() -> bool:
    """Serve blocks of 1 MiB and more by ``mmap`` (freed back to the system) in this process; glibc only.

    Returns whether the setting was applied (False: not glibc, or the user chose a threshold)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    user_set = "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in tunables
    if user_set or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    return applied and mallopt(_M_TRIM_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
