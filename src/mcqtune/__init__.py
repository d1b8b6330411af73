"""mcqtune: fine-tune causal LMs for multiple-choice QA with PEFT methods and evaluate them honestly."""

__version__ = "0.1.0"

import logging as _logging

from mcqtune.training.memory import keep_activations_on_the_heap as _keep_activations_on_the_heap
from mcqtune.training.memory import limit_primitive_caches as _limit_primitive_caches

# Before anything imports torch: bounded shape-keyed oneDNN caches, and activation buffers reused from
# glibc's heap at fixed thresholds (the trainer gives freed pages back every few steps): training RSS
# stays flat without a page fault per buffer (mcqtune/training/memory.py).
_limit_primitive_caches()
_keep_activations_on_the_heap()

# bitsandbytes tries to fetch an optional CPU kernel from the hub at import and warns when offline;
# its built-in CPU path works, so the warning is noise for every mcqtune user.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
