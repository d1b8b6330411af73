"""mcqtune: fine-tune causal LMs for multiple-choice QA with PEFT methods and evaluate them honestly."""

__version__ = "0.1.0"

import logging as _logging

from mcqtune.training.memory import limit_heap_fragmentation as _limit_heap_fragmentation
from mcqtune.training.memory import limit_primitive_caches as _limit_primitive_caches

# Before anything imports torch: bounded shape-keyed oneDNN caches and a fixed mmap threshold keep
# training RSS flat (mcqtune/training/memory.py).
_limit_primitive_caches()
_limit_heap_fragmentation()

# bitsandbytes tries to fetch an optional CPU kernel from the hub at import and warns when offline;
# its built-in CPU path works, so the warning is noise for every mcqtune user.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
