"""Training configuration: defaults < per-method YAML < user YAML (``--config``) < command-line flags.

Unknown keys and wrong types are user errors with a message naming the file and key; a typo in a
config must never be silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin, get_type_hints

import yaml

from mcqtune.errors import ConfigError
from mcqtune.models import DEFAULT_MODEL
from mcqtune.prompt import PromptConfig

if TYPE_CHECKING:
    from mcqtune.data import FieldMap

OBJECTIVES = ("auto", "letter", "ranking")
SCORINGS = ("auto", "letter", "cloze")
OBJECTIVE_TO_SCORING = {"letter": "letter", "ranking": "cloze"}
# Below this many parameters the letter formulation only learns the letter prior (measured, README).
LETTER_FORMULATION_MIN_PARAMS = 1_000_000_000


@dataclass
class TrainConfig:
    method: str = "lora"
    objective: str = "auto"
    model: str = DEFAULT_MODEL
    train: str = "medmcqa"
    validation: str | None = "medmcqa"
    format: str = "auto"
    # The user's own column names (mcqtune.data.FieldMap): applied to the train and validation files.
    fields: dict[str, Any] = field(default_factory=dict)
    answer_base: int | None = None
    strip_query_prefix: bool = False
    output: str | None = None
    max_steps: int | None = 200
    epochs: float | None = None
    batch_size: int = 4
    grad_accum: int = 1
    lr: float | None = None
    weight_decay: float | None = None
    warmup_ratio: float = 0.1
    scheduler: str = "linear"
    max_grad_norm: float = 1.0
    seed: int = 42
    eval_steps: int = 50
    eval_limit: int | None = 200
    final_eval_limit: int | None = None
    train_limit: int | None = None
    eval_batch_size: int = 16
    precision: str = "auto"
    packing: bool = True
    # Permute each training example's options per epoch, answer remapped (letter objective only; measured
    # better than off on held-out letter bias and order-averaged accuracy: docs/EVALUATION.md).
    shuffle_options: bool = True
    on_bad_rows: str = "error"
    save_steps: int | None = 20  # checkpoint every N optimizer steps (and at the last); None: only on Ctrl-C
    keep_checkpoints: int = 2
    method_options: dict[str, Any] = field(default_factory=dict)
    prompt: dict[str, Any] = field(default_factory=dict)

    def validate(self, source: str = "config") -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"{source}: '{key}' {why}")

        from mcqtune.data import FORMATS, DataError

        self.validate_method(source)
        if self.format != "auto" and self.format not in FORMATS:
            raise bad("format", f"must be auto or one of {', '.join(FORMATS)}, got '{self.format}'")
        try:
            self.field_map()
        except DataError as exc:  # names the key: "fields: unknown key 'qestion' ..."
            raise ConfigError(f"{source}: {exc}") from None
        if self.objective not in OBJECTIVES:
            raise bad("objective", f"must be one of {', '.join(OBJECTIVES)}, got '{self.objective}'")
        if self.max_steps is None and self.epochs is None:
            raise bad("max_steps", "or 'epochs' must be set")
        if self.max_steps is not None and self.max_steps <= 0:
            raise bad("max_steps", f"must be a positive integer, got {self.max_steps}")
        if self.epochs is not None and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise bad("epochs", f"must be a positive number, got {self.epochs}")
        for key in ("batch_size", "grad_accum", "eval_batch_size", "eval_steps", "keep_checkpoints"):
            if getattr(self, key) <= 0:
                raise bad(key, f"must be a positive integer, got {getattr(self, key)}")
        for key in ("eval_limit", "final_eval_limit", "train_limit", "save_steps"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise bad(key, f"must be a positive integer, got {value}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise bad("lr", f"must be a positive number, got {self.lr}")
        if self.weight_decay is not None and not (
            math.isfinite(self.weight_decay) and self.weight_decay >= 0
        ):
            raise bad("weight_decay", f"must be a number >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
            raise bad(
                "max_grad_norm", f"must be a number >= 0 (0 disables clipping), got {self.max_grad_norm}"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise bad("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if self.scheduler not in ("linear", "cosine", "constant"):
            raise bad("scheduler", f"must be linear, cosine or constant, got '{self.scheduler}'")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise bad("precision", f"must be auto, bf16 or fp32, got '{self.precision}'")
        if self.on_bad_rows not in ("error", "skip"):
            raise bad("on_bad_rows", f"must be error or skip, got '{self.on_bad_rows}'")
        unknown = set(self.prompt) - set(PromptConfig.__dataclass_fields__)
        if unknown:
            raise bad("prompt", f"has unknown keys: {', '.join(sorted(unknown))}")
        max_length = self.prompt.get("max_length")
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0
        ):
            raise bad("prompt.max_length", f"must be a positive integer, got {max_length!r}")

    def validate_method(self, source: str = "config") -> None:
        from mcqtune.methods import METHODS

        if self.method not in METHODS:
            known = ", ".join(sorted(METHODS))
            raise ConfigError(f"{source}: 'method' unknown method '{self.method}'; choose one of: {known}")
        # The method's defaults file lists every option it reads: a typo (``rank`` for ``r``) must not
        # silently train with the default instead.
        allowed = set(method_defaults(self.method).get("method_options") or {})
        unknown = set(self.method_options) - allowed
        if unknown:
            raise ConfigError(
                f"{source}: method_options: unknown option(s) for '{self.method}': "
                f"{', '.join(sorted(unknown))}; known: {', '.join(sorted(allowed)) or 'none'}"
            )

    def field_map(self) -> FieldMap:
        """Where the train and validation files keep each part of a question."""
        from mcqtune.data import FieldMap

        return FieldMap.from_config(self.to_dict())

    def prompt_config(self) -> PromptConfig:
        return PromptConfig.from_dict(self.prompt)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(key: str, value: Any, annotation: Any, source: str) -> Any:
    """Coerce YAML scalars to the field's type; raise a ConfigError naming the key when impossible."""
    is_union = get_origin(annotation) in (Union, UnionType)
    args = get_args(annotation) if is_union else ()
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: '{key}' must not be empty")
    base = next((a for a in args if a is not type(None)), annotation) if args else annotation
    origin = get_origin(base) or base
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {type(value).__name__}")
        return value
    if origin is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
        return value
    if origin is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
        return value
    if origin is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")
        return float(value)
    if origin is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
        return str(value)
    return value


def read_yaml(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: config file not found" + (" (it is a directory)" if path.is_dir() else "")
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys")
    return data


def apply_overrides(config: TrainConfig, overrides: dict[str, Any], source: str) -> TrainConfig:
    """Return a copy with ``overrides`` applied; the mappings (method_options, prompt, fields) are merged."""
    known = {f.name for f in fields(TrainConfig)}
    hints = get_type_hints(TrainConfig)
    updates: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown key '{key}'; known keys: {', '.join(sorted(known))}")
        value = _check_type(key, value, hints[key], source)
        if key in ("method_options", "prompt", "fields"):
            value = {**getattr(config, key), **value}
        updates[key] = value
    return dataclasses.replace(config, **updates)


def method_defaults(method: str) -> dict[str, Any]:
    """The per-method defaults file, as TrainConfig overrides (``options`` becomes method_options)."""
    resource = resources.files("mcqtune") / "configs" / "methods" / f"{method}.yaml"
    if not resource.is_file():
        return {}
    data = yaml.safe_load(resource.read_text(encoding="utf-8")) or {}
    if "options" in data:
        data["method_options"] = data.pop("options")
    return data


def build_config(
    flags: dict[str, Any], config_file: str | None = None, base: TrainConfig | None = None
) -> TrainConfig:
    """Resolve the layers; flags whose value is None were not given and do not override."""
    user = read_yaml(config_file) if config_file else {}
    method = flags.get("method") or user.get("method") or (base.method if base else "lora")
    config = base or TrainConfig()
    config = apply_overrides(config, {"method": method}, "flags")
    # A registered name only: the name also picks a file under configs/methods/ (no path tricks).
    config.validate_method("command line" if flags.get("method") else str(config_file or "config"))
    config = apply_overrides(config, method_defaults(method), f"configs/methods/{method}.yaml")
    if user:
        config = apply_overrides(config, user, str(config_file))
    given = {k: v for k, v in flags.items() if v is not None}
    config = apply_overrides(config, given, "command line")
    config.validate(str(config_file) if config_file else "command line")
    return config


def resolve_objective(objective: str, n_params: int) -> str:
    """'auto': ranking (cloze) for small models, letter for >= 1B parameters (see README numbers)."""
    if objective != "auto":
        return objective
    return "letter" if n_params >= LETTER_FORMULATION_MIN_PARAMS else "ranking"


def resolve_scoring(scoring: str, n_params: int) -> str:
    if scoring != "auto":
        return scoring
    return OBJECTIVE_TO_SCORING[resolve_objective("auto", n_params)]
