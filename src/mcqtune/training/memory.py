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

**Heap: reuse, then give back.** glibc's malloc serves large blocks with ``mmap`` above a threshold that
it *raises* to the size of every mmapped block freed, up to 32 MiB. Activation buffers of 1-32 MiB then
came from the heap, freed between live blocks could not be returned, and each new batch length left
holes of new sizes, so RSS crept up (full fine-tuning +24%, the bottleneck adapter +17% in median over
200 steps with the caches bounded). The first fix served every block of 1 MiB and more by a fresh
``mmap``: flat, but every activation buffer is then a new zero-filled mapping, faulted in page by page
(10.6 million page faults in 8 fp32 LoRA steps at batch 8) and unmapped on free: at fp32 on an AVX2 CPU
that was a third of the step. :func:`keep_activations_on_the_heap` instead fixes the threshold at
64 MiB (no raising: every activation buffer of the models mcqtune trains on a CPU is reused from the heap,
without page faults) and stops glibc from trimming the heap's top on its own: a step's freed activations
are the next step's, and pages handed back are faulted in again (a per-step ``malloc_trim`` re-faulted
~1.3 GiB, 340 thousand faults, every fp32 LoRA step at batch 8: 1.2x slower). The trainer instead calls
:func:`release_freed_memory` (``malloc_trim``) every ``RELEASE_EVERY_STEPS`` steps and when training
ends, which hands the pages of freed heap blocks, holes included, back to the system, so blocks freed
between live ones cannot accumulate over a long run. Measured (SmolLM2-135M, LoRA letter, batch 8;
docs/PERFORMANCE.md, lever log): fp32 under AVX2, 4.45 -> 3.0 s a step with the 64 MiB threshold, and
1.2x more without the per-step trim; bf16 on an AVX-512-bf16 CPU, 2.52 -> 1.56 s. A threshold the user
set (``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES``) wins; other C libraries (musl, macOS) have no such
setting and are left alone.
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


MMAP_THRESHOLD_BYTES = 64 << 20
# glibc trims the heap's top when more than this is free there: the largest value mallopt takes, so it
# (almost) never does, and the trainer's periodic release_freed_memory decides when pages go back.
TRIM_THRESHOLD_BYTES = 2**31 - 1
# Training steps between two releases: rare enough that re-faulting the released pages costs ~1% of
# the steps, often enough that freed blocks never pile up (flat over 200 steps: docs/PERFORMANCE.md).
RELEASE_EVERY_STEPS = 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)


def _glibc_function(name: str):
    """The C library's ``name`` when this process runs on glibc (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None), name)  # the C library this process already runs on
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _glibc_function("malloc_trim")


def keep_activations_on_the_heap() -> bool:
    """Serve blocks under 64 MiB from glibc's heap, at a threshold glibc no longer moves.

    Returns whether the setting was applied (False: not glibc, or the user chose a threshold)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    user_set = "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in tunables
    mallopt = _glibc_function("mallopt")
    if user_set or mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    return applied and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1


def release_freed_memory() -> None:
    """Give the pages of freed heap blocks back to the system (glibc's ``malloc_trim``).

    The trainer calls it every ``RELEASE_EVERY_STEPS`` steps and when training ends (RSS afterwards is
    what is alive, not the heap's high-water mark); each call costs the next step a page fault per page
    it gave back, which is why it is not called after every step."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
