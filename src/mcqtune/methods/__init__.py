"""Fine-tuning methods, one module each, behind :class:`mcqtune.methods.base.Method`.

Every module of this package is imported here, so a method registers itself by existing: adding one
is its module, its ``configs/methods/<name>.yaml`` and its tests. A named preset of a method (DoRA of
LoRA, Houlsby of the adapter) is only a YAML file with ``preset_of``, registered after the modules.
"""

import importlib
import pkgutil

from mcqtune.methods.base import METHODS, Method, get_method, parameter_report, register_presets

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
register_presets()

__all__ = ["METHODS", "Method", "get_method", "parameter_report"]
