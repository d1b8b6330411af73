"""Why CPU training memory grew with every step, and the setting that keeps it flat.

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
"""

from __future__ import annotations

import os

PRIMITIVE_CACHE_VARIABLES = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")
PRIMITIVE_CACHE_ENTRIES = 32


def limit_primitive_caches() -> None:
    """Bound the shape-keyed oneDNN/ideep primitive caches unless the environment already sets them."""
    for variable in PRIMITIVE_CACHE_VARIABLES:
        os.environ.setdefault(variable, str(PRIMITIVE_CACHE_ENTRIES))
