"""The per-method defaults files, ``configs/methods/<name>.yaml``, as written: read by the config layer
(defaults of a run) and by the method registry (which presets to register), so it imports neither.
"""

from __future__ import annotations

import copy
import functools
from importlib import resources
from typing import Any

import yaml

# Keys of a configs/methods/<name>.yaml that describe the method rather than configure a run: a preset
# names the method it presets and says what it is; ``lr_grid`` is the learning rates ``compare --tune lr``
# tries; ``flags`` gives options a command-line flag of their own; ``search`` is the method's search
# space for ``mcqtune search`` (mcqtune.search.space).
PRESET_OF = "preset_of"
LR_GRID = "lr_grid"
OPTION_FLAGS = "flags"
SEARCH = "search"
METHOD_FILE_KEYS = (PRESET_OF, "description", LR_GRID, OPTION_FLAGS, SEARCH)


def method_file(method: str) -> dict[str, Any]:
    """A method's defaults file as written, with a preset's file laid over the file of the method it
    presets (``preset_of``; options merged key by key): every default is written once."""
    resource = resources.files("mcqtune") / "configs" / "methods" / f"{method}.yaml"
    if not resource.is_file():
        return {}
    data = _parsed(resource.read_text(encoding="utf-8"))
    parent = data.get(PRESET_OF)
    if parent is None:
        return data
    inherited = {k: v for k, v in method_file(parent).items() if k not in METHOD_FILE_KEYS}
    options = {**(inherited.get("options") or {}), **(data.get("options") or {})}
    return {**inherited, **data, "options": options}


def _parsed(text: str) -> dict[str, Any]:
    """A fresh copy of the parsed file: a run reads the method files dozens of times (defaults, presets,
    flags), and parsing was a quarter of a short run's own time."""
    return copy.deepcopy(_parse(text))


@functools.lru_cache(maxsize=128)
def _parse(text: str) -> dict[str, Any]:
    return yaml.safe_load(text) or {}


def method_presets() -> dict[str, dict[str, Any]]:
    """Every preset's file (name -> merged file), read from configs/methods/*.yaml."""
    return {name: file for name in method_file_names() if (file := method_file(name)).get(PRESET_OF)}


def method_file_names() -> list[str]:
    """The names of configs/methods/*.yaml: every method and preset, without importing the methods."""
    directory = resources.files("mcqtune") / "configs" / "methods"
    return sorted(p.name.removesuffix(".yaml") for p in directory.iterdir() if p.name.endswith(".yaml"))


def method_option_flags() -> list[tuple[str, str, str]]:
    """Every option flag the method files declare (``flags: {option: [--flag, what it does]}``), as
    (flag, option, help) in file order; a flag declared twice must mean the same option."""
    found: dict[str, tuple[str, str, str]] = {}
    for name in method_file_names():
        declared = method_file(name).get(OPTION_FLAGS) or {}
        for key, (flag, text) in declared.items():
            if flag in found and found[flag][1] != key:
                raise ValueError(
                    f"configs/methods/{name}.yaml: {flag} is already the flag of {found[flag][1]}"
                )
            found.setdefault(flag, (flag, key, text))
    return list(found.values())
