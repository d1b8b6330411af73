"""Fine-tuning methods, one module each, behind :class:`mcqtune.methods.base.Method`."""

from mcqtune.methods import adapter, full, lora, prefix, qlora, subset  # noqa: F401  (registers)
from mcqtune.methods.base import METHODS, Method, get_method, parameter_report

__all__ = ["METHODS", "Method", "get_method", "parameter_report"]
