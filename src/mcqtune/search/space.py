"""A method's search space: the ``search:`` block of ``configs/methods/<name>.yaml``, overridable per method
from a user's ``--space FILE``; checked once, before any trial, with errors naming the file and key.

A parameter is one of the training settings in :data:`TUNABLE_KEYS` (learning rate, weight decay, ...),
one of the method's own options (anything its defaults file lists under ``options``), or ``preset``:
a choice among the method itself and its presets (LoRA: DoRA, rsLoRA, PiSSA, ...), whose options are
laid over the method's. Each parameter is written as Optuna distributes it::

    lr: {type: float, low: 1.0e-5, high: 5.0e-3, log: true}
    r: {type: int, low: 2, high: 64, log: true}
    non_linearity: {type: categorical, choices: [relu, swish, gelu]}

A preset searched on its own (``--methods dora``) inherits its method's space, without ``preset``.
In a ``--space`` file the top-level keys are method names (one file may serve several searches: methods
not searched are left alone); a parameter given there replaces the method's own, and ``null`` takes it
out of the search (the method's default is used).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcqtune.errors import ConfigError
from mcqtune.method_files import PRESET_OF, SEARCH, method_file, method_file_names, method_presets

# Training settings a search may vary per method; the budget (steps, batch, data, evaluation) stays the
# same for every trial, or trials would not be comparable (and the pruner's steps would mean nothing).
TUNABLE_KEYS = ("lr", "weight_decay", "warmup_ratio", "scheduler", "max_grad_norm")
PRESET = "preset"
KINDS = ("float", "int", "categorical")
SPEC_KEYS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"}}
SPEC_KEYS["categorical"] = {"choices"}


@dataclass(frozen=True)
class Param:
    """One searched parameter as Optuna's ``suggest_*`` takes it."""

    name: str
    kind: str  # float, int, categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        """Draw this parameter for an Optuna trial."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            step = int(self.step or 1)
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        if self.kind == "categorical":
            return "{" + ", ".join(map(str, self.choices)) + "}"
        scale = " log" if self.log else ""
        return f"[{self.low:g}, {self.high:g}]{scale}"


@dataclass(frozen=True)
class SearchSpace:
    method: str
    params: tuple[Param, ...]

    def sample(self, trial) -> dict[str, Any]:
        """Every parameter drawn for ``trial`` (name -> value)."""
        return {p.name: p.suggest(trial) for p in self.params}

    def overrides(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Drawn values as TrainConfig overrides: training settings as keys, a preset's options laid
        under the drawn options, the rest in ``method_options``."""
        options: dict[str, Any] = {}
        preset = values.get(PRESET)
        if preset is not None and preset != self.method:
            options.update(preset_options(self.method, preset))
        options.update({k: v for k, v in values.items() if k != PRESET and k not in TUNABLE_KEYS})
        out: dict[str, Any] = {k: v for k, v in values.items() if k in TUNABLE_KEYS}
        if options:
            out["method_options"] = options
        return out


def preset_options(method: str, preset: str) -> dict[str, Any]:
    """The options a preset changes relative to its method (DoRA: ``use_dora: true``)."""
    base = method_file(method).get("options") or {}
    own = method_file(preset).get("options") or {}
    return {k: v for k, v in own.items() if base.get(k) != v}


def method_space_spec(method: str) -> tuple[dict[str, Any], str]:
    """The ``search:`` block of a method's file (a preset without one: its method's, less ``preset``)
    and the file it came from."""
    where = f"configs/methods/{method}.yaml"
    data = method_file(method)
    block = data.get(SEARCH)
    parent = data.get(PRESET_OF)
    if block is None and parent is not None:
        block = {k: v for k, v in (method_file(parent).get(SEARCH) or {}).items() if k != PRESET}
        where = f"configs/methods/{parent}.yaml"
    if block is None:
        raise ConfigError(f"{where}: no '{SEARCH}:' block, so '{method}' has no search space; add one")
    if not isinstance(block, dict):
        raise ConfigError(f"{where}: '{SEARCH}' must be a mapping of parameter -> distribution")
    return block, where


def load_spaces(methods: list[str], space_file: str | None = None) -> dict[str, SearchSpace]:
    """Every method's checked search space, the user's ``--space`` file laid over the methods' own."""
    from mcqtune.config import read_yaml

    user = read_yaml(space_file) if space_file else {}
    unknown = sorted(set(user) - set(method_file_names()))  # a typo must not leave a space unchanged
    if unknown:
        raise ConfigError(
            f"{space_file}: top-level keys are method names ({', '.join(method_file_names())}); "
            f"got {', '.join(unknown)}"
        )
    spaces = {}
    for method in methods:
        block, where = method_space_spec(method)
        specs = {name: (spec, f"{where}: {SEARCH}.{name}") for name, spec in block.items()}
        mine = user.get(method) or {}
        if not isinstance(mine, dict):
            raise ConfigError(f"{space_file}: '{method}' must be a mapping of parameter -> distribution")
        for name, spec in mine.items():
            if spec is None:
                specs.pop(name, None)
            else:
                specs[name] = (spec, f"{space_file}: {method}.{name}")
        params = tuple(parse_param(method, name, spec, source) for name, (spec, source) in specs.items())
        if not params:
            raise ConfigError(f"{space_file or where}: nothing left to search for '{method}'")
        spaces[method] = SearchSpace(method, params)
    return spaces


def parse_param(method: str, name: str, spec: Any, source: str) -> Param:
    """One distribution, checked: its kind and bounds, and that every value it can give is one the
    method accepts (an option's type, a registered preset)."""
    from mcqtune.config import check_method_options, method_option_defaults

    if not isinstance(spec, dict):
        raise ConfigError(f"{source}: expected a mapping like {{type: float, low: ..., high: ...}}")
    kind = spec.get("type")
    if kind not in KINDS:
        raise ConfigError(f"{source}: 'type' must be one of {', '.join(KINDS)}, got {kind!r}")
    extra = set(spec) - SPEC_KEYS[kind] - {"type"}
    if extra:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(sorted(extra))} for a {kind} parameter")
    options = method_option_defaults(method)
    if name not in TUNABLE_KEYS and name != PRESET and name not in options:
        raise ConfigError(
            f"{source}: '{name}' is neither a setting a search may vary ({', '.join(TUNABLE_KEYS)}), "
            f"'{PRESET}', nor an option of {method} ({', '.join(sorted(options)) or 'none'})"
        )
    param = _categorical(spec, source) if kind == "categorical" else _numeric(kind, spec, source)
    param = Param(name=name, **param)
    samples = list(param.choices) if kind == "categorical" else [param.low, param.high]
    for value in samples:
        if name == PRESET:
            presets = sorted(p for p, f in method_presets().items() if f.get(PRESET_OF) == method)
            if value != method and value not in presets:
                known = ", ".join(presets) or "none"
                raise ConfigError(f"{source}: '{value}' is not {method} or one of its presets ({known})")
        elif name in TUNABLE_KEYS:
            _check_setting(name, value, source)
        else:
            check_method_options(method, {name: value}, source)
    return param


def _categorical(spec: dict[str, Any], source: str) -> dict[str, Any]:
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{source}: 'choices' must be a non-empty list")
    for choice in choices:
        if choice is not None and not isinstance(choice, bool | int | float | str):
            raise ConfigError(f"{source}: choices must be numbers, names or true/false, got {choice!r}")
    return {"kind": "categorical", "choices": tuple(choices)}


def _numeric(kind: str, spec: dict[str, Any], source: str) -> dict[str, Any]:
    number = int if kind == "int" else (int, float)
    values = {}
    for key in ("low", "high"):
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
            raise ConfigError(f"{source}: '{key}' must be {'an integer' if kind == 'int' else 'a number'}")
        values[key] = value
    if not values["low"] < values["high"]:
        raise ConfigError(f"{source}: 'low' ({values['low']}) must be below 'high' ({values['high']})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{source}: 'log' must be true or false")
    if log and values["low"] <= 0:
        raise ConfigError(f"{source}: a log scale needs 'low' > 0, got {values['low']}")
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, number) or step <= 0):
        raise ConfigError(f"{source}: 'step' must be a positive number")
    if step is not None and log:
        raise ConfigError(f"{source}: 'step' and 'log' cannot be combined")
    return {"kind": kind, "low": values["low"], "high": values["high"], "log": log, "step": step}


def _check_setting(name: str, value: Any, source: str) -> None:
    """A training setting's value must pass its own field's checks (a learning rate > 0, ...)."""
    from mcqtune.config import TrainConfig

    try:
        TrainConfig(**{name: value}).validate(source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: value {value!r}: {exc}") from None
