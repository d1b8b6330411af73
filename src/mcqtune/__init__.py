"""mcqtune: fine-tune causal LMs for multiple-choice QA with PEFT methods and evaluate them honestly."""

__version__ = "0.1.0"

import logging as _logging

from mcqtune.training.memory import limit_primitive_caches as _limit_primitive_caches

# Before anything imports torch: a bounded shape-keyed oneDNN cache keeps training RSS flat
# (mcqtune/training/memory.py).
_limit_primitive_caches()

# bitsandbytes tries to fetch an optional CPU kernel from the hub at import and warns when offline;
# its built-in CPU path works, so the warning is noise for every mcqtune user.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
