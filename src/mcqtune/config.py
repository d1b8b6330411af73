"""Training configuration: defaults < per-method YAML < user YAML (``--config``) < command-line flags.

Every :class:`TrainConfig` field carries its own help text, choices, checks and default (:func:`setting`);
the ``train`` and ``compare`` flags, their ``--help`` defaults and every list of config keys elsewhere are
derived from these fields. Unknown keys and wrong types are user errors naming the file and key (or the
flag, when the value came from the command line); a typo in a config must never be silently ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin, get_type_hints

import yaml

from mcqtune.errors import ConfigError
from mcqtune.method_files import LR_GRID, METHOD_FILE_KEYS, method_file, method_file_names, method_presets
from mcqtune.model_names import DEFAULT_MODEL
from mcqtune.prompt import PromptConfig
from mcqtune.settings import check_fields, flag_name, scalar_type, setting
from mcqtune.settings import describe_default as describe_field_default

if TYPE_CHECKING:
    from mcqtune.data import FieldMap

OBJECTIVES = ("auto", "letter", "ranking")
SCORINGS = ("auto", "letter", "cloze")
PRECISIONS = ("auto", "bf16", "fp32")
SCHEDULERS = ("linear", "cosine", "constant")
ON_BAD_ROWS = ("error", "skip")
OBJECTIVE_TO_SCORING = {"letter": "letter", "ranking": "cloze"}
# Below this many parameters the letter formulation only learns the letter prior (measured, README).
LETTER_FORMULATION_MIN_PARAMS = 1_000_000_000
# ``validation: auto``: the training set's own validation split when it is a bundled name, else none.
AUTO = "auto"
COMMAND_LINE = "command line"

# Tags on a field: where else the key is used.
TAG_SHARED = "shared"  # compare: must be identical for every method (the fair-comparison budget)
TAG_ZERO_SHOT = "zero_shot"  # compare: a zero-shot row depends on it (a change re-runs it on --resume)
TAG_COMPARE = "compare_flag"  # compare has a flag for it


def data_formats() -> tuple[str, ...]:
    from mcqtune.data import FORMATS

    return (AUTO, *FORMATS)


def _registered_methods() -> tuple[str, ...]:
    from mcqtune.methods import METHODS

    return tuple(sorted(METHODS))


_RUN = (TAG_SHARED, TAG_ZERO_SHOT, TAG_COMPARE)  # the data, model and evaluation every compare row shares
_SHARED_FLAG = (TAG_SHARED, TAG_COMPARE)  # the same for every compare row, and a compare flag
_ROW_LIMIT = {"check": "positive", "none_means": "all"}
PER_METHOD = "per method (configs/methods/*.yaml)"


@dataclass
class TrainConfig:
    method: str = setting("lora", "training method", choices=_registered_methods)
    objective: str = setting(
        "auto",
        "letter: LM loss on the answer letter; ranking: cross-entropy over cloze option scores; "
        "auto: ranking below 1B parameters, letter from 1B",
        choices=OBJECTIVES,
        tags=_RUN,
    )
    model: str = setting(DEFAULT_MODEL, "bundled name, local HF dir, .gguf file or hub id", tags=_RUN)
    train: str = setting(
        "medmcqa",
        "training data: a file, a bundled name (medmcqa, arc_easy), a saved or hub-layout data set "
        "directory, or a hub id owner/name; SOURCE:SPLIT names a split",
        tags=_SHARED_FLAG,
    )
    validation: str | None = setting(
        AUTO,
        "validation data, as --train; auto: the training data's own validation split when it is a "
        "bundled name, none otherwise",
        tags=_RUN,
    )
    subset: str | None = setting(
        None,
        "the subset (configuration) of a hub data set or hub-layout directory named by the data flags",
        none_means="the data set's only one",
        tags=_RUN,
    )
    format: str = setting(AUTO, "data format", choices=data_formats, tags=(TAG_SHARED, TAG_ZERO_SHOT))
    # The user's own column names (mcqtune.data.FieldMap): applied to the train and validation files;
    # given as --field/--answer-base/--strip-query-prefix (cli/data_args.py) or in the YAML.
    fields: dict[str, Any] = setting(factory=dict, flag=False, tags=(TAG_SHARED, TAG_ZERO_SHOT))
    answer_base: int | None = setting(None, flag=False, tags=(TAG_SHARED, TAG_ZERO_SHOT))
    strip_query_prefix: bool = setting(False, flag=False, tags=(TAG_SHARED, TAG_ZERO_SHOT))
    output: str | None = setting(None, "run directory for the artifact, config and metrics", required=True)
    max_steps: int | None = setting(
        200, "optimizer steps", check="positive", none_means="unset: --epochs decides", tags=_SHARED_FLAG
    )
    max_train_seconds: float | None = setting(
        None,
        "stop training once its steps have taken this many seconds (compare --budget time=...); "
        "the run keeps its best validated state so far",
        check="positive",
        none_means="no time limit",
        tags=(TAG_SHARED,),
    )
    epochs: float | None = setting(
        None,
        "epochs to train instead of --max-steps",
        check="positive",
        none_means="unset",
        tags=(TAG_SHARED,),
    )
    batch_size: int = setting(4, "questions per micro-batch", check="positive", tags=_SHARED_FLAG)
    grad_accum: int = setting(1, "micro-batches per optimizer step", check="positive", tags=(TAG_SHARED,))
    gradient_checkpointing: bool = setting(
        False,
        "keep only each layer's input and recompute the rest in the backward pass: activation memory of "
        "one layer instead of all, for one more forward pass per step (bundled model, CPU: 1.7x the time)",
        tags=_SHARED_FLAG,
    )
    lr: float | None = setting(None, "peak learning rate", check="positive", none_means=PER_METHOD)
    weight_decay: float | None = setting(
        None, "AdamW weight decay", check="non_negative", none_means=PER_METHOD
    )
    warmup_ratio: float = setting(0.1, "share of the steps that warm the learning rate up", check="ratio")
    scheduler: str = setting("linear", "learning-rate schedule after warm-up", choices=SCHEDULERS)
    max_grad_norm: float = setting(
        1.0, "clip the gradient norm to this (0: no clipping)", check="non_negative"
    )
    seed: int = setting(42, "seed for initialisation, data order and sampling", tags=_RUN)
    eval_steps: int = setting(
        50, "validate every N steps and keep the best", check="positive", tags=_SHARED_FLAG
    )
    validate_at_start: bool = setting(
        True,
        "validate the untrained model before step 1: the learning curve's start (search and --tune trials "
        "skip it: their pruners compare checks after step 0)",
    )
    eval_limit: int | None = setting(
        200, "validation rows used during training", **_ROW_LIMIT, tags=_SHARED_FLAG
    )
    final_eval_limit: int | None = setting(None, "rows for the final validation", **_ROW_LIMIT, tags=_RUN)
    train_limit: int | None = setting(
        None, "use only the first N training rows", **_ROW_LIMIT, tags=_SHARED_FLAG
    )
    eval_batch_size: int = setting(
        16, "questions per evaluation batch", check="positive", tags=(TAG_SHARED, TAG_ZERO_SHOT)
    )
    precision: str = setting(
        "auto", "auto: bf16 autocast where supported, else fp32", choices=PRECISIONS, tags=_RUN
    )
    packing: bool = setting(
        True,
        "compute shared tokens once (methods that support it): cloze scores all options of a question in"
        " one packed row; letter runs the prompt start a batch's rows share once, as a cache they continue",
        tags=(TAG_ZERO_SHOT,),
    )
    # Measured better than off on held-out letter bias and order-averaged accuracy: docs/EVALUATION.md.
    shuffle_options: bool = setting(
        True,
        "permute each training example's options every epoch (answer letter remapped) so the model cannot "
        "learn the data's letter skew; letter objective only",
    )
    on_bad_rows: str = setting(
        "error",
        "error: stop at the first bad row; skip: drop and count bad rows",
        choices=ON_BAD_ROWS,
        tags=(TAG_SHARED, TAG_ZERO_SHOT),
    )
    save_steps: int | None = setting(
        20,
        "checkpoint every N steps for --resume (Ctrl-C saves too)",
        check="positive",
        none_means="only on Ctrl-C",
    )
    keep_checkpoints: int = setting(2, "checkpoints kept while training", check="positive")
    report_to: str | None = setting(
        None,
        "experiment trackers for the run's settings, curves and results: tensorboard, mlflow, wandb, "
        "comma-separated (pip install 'mcqtune[tracking]')",
        none_means="none",
        tags=(TAG_COMPARE,),
    )
    method_options: dict[str, Any] = setting(factory=dict, flag=False)
    prompt: dict[str, Any] = setting(factory=dict, flag=False, tags=(TAG_SHARED, TAG_ZERO_SHOT))

    def validate(self, source: str = "config", from_flags: Iterable[str] = ()) -> None:
        """Check every field's choices and range; ``from_flags``: keys whose value the user typed as a
        flag, named as that flag (``--max-steps``) instead of ``source: 'max_steps'``."""
        typed = set(from_flags)

        def bad_where(key: str) -> str:
            # prompt.max_length typed as --max-length: the flag is named after the last part
            return (
                flag_name(key.rpartition(".")[2]) if key.partition(".")[0] in typed else f"{source}: '{key}'"
            )

        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"{bad_where(key)} {why}")

        from mcqtune.data import DataError

        self.validate_method(COMMAND_LINE if "method" in typed else source)
        try:
            self.field_map()
        except DataError as exc:  # names the key: "fields: unknown key 'qestion' ..."
            raise ConfigError(f"{source}: {exc}") from None
        check_fields(self, lambda key: bad_where(key))
        from mcqtune.tracking import parse_report_to

        parse_report_to(self.report_to, bad_where("report_to"))
        if self.max_steps is None and self.epochs is None:
            raise bad("max_steps", "or 'epochs' must be set")
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
            where = flag_name("method") if source == COMMAND_LINE else f"{source}: 'method'"
            raise ConfigError(f"{where}: unknown method '{self.method}'; choose one of: {known}")
        check_method_options(self.method, self.method_options, source)

    def field_map(self) -> FieldMap:
        """Where the train and validation files keep each part of a question."""
        from mcqtune.data import FieldMap

        return FieldMap.from_config(self.to_dict())

    def prompt_config(self) -> PromptConfig:
        return PromptConfig.from_dict(self.prompt)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CONFIG_FIELDS = {f.name: f for f in fields(TrainConfig)}


def keys_tagged(tag: str) -> tuple[str, ...]:
    """Config keys carrying ``tag`` (TAG_SHARED, TAG_ZERO_SHOT, TAG_COMPARE), in field order."""
    return tuple(name for name, f in CONFIG_FIELDS.items() if tag in f.metadata["tags"])


def flag_keys() -> tuple[str, ...]:
    """Config keys with a command-line flag of their own."""
    return tuple(name for name, f in CONFIG_FIELDS.items() if f.metadata["flag"])


def field_type(key: str) -> type:
    """The scalar type of a field (``int | None`` -> int)."""
    return scalar_type(TrainConfig, key)


def describe_default(key: str, value: Any = dataclasses.MISSING) -> str:
    """What ``--help`` says a config key defaults to: the value, or what an unset value means."""
    return describe_field_default(CONFIG_FIELDS[key], value)


def flag_help(key: str, value: Any = dataclasses.MISSING) -> str:
    """A config key's help text ending with its default, e.g. ``optimizer steps (default: 200)``."""
    return f"{CONFIG_FIELDS[key].metadata['help']} ({describe_default(key, value)})"


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
    """Return a copy with ``overrides`` applied; the mappings (method_options, prompt, fields) are merged.
    A layer that sets ``epochs`` but not ``max_steps`` trains for those epochs (unsets max_steps)."""
    hints = get_type_hints(TrainConfig)
    updates: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in CONFIG_FIELDS:
            known = ", ".join(sorted(CONFIG_FIELDS))
            raise ConfigError(f"{source}: unknown key '{key}'; known keys: {known}")
        value = _check_type(key, value, hints[key], source)
        if key in ("method_options", "prompt", "fields"):
            value = {**getattr(config, key), **value}
        updates[key] = value
    if updates.get("epochs") is not None and "max_steps" not in updates:
        updates["max_steps"] = None
    return dataclasses.replace(config, **updates)


def method_defaults(method: str) -> dict[str, Any]:
    """The per-method defaults file, as TrainConfig overrides (``options`` becomes method_options)."""
    data = {k: v for k, v in method_file(method).items() if k not in METHOD_FILE_KEYS}
    if "options" in data:
        data["method_options"] = data.pop("options") or {}
    return data


def method_lr_grid(method: str) -> list[float]:
    """The learning rates ``compare --tune lr`` tries for ``method``: its defaults file's ``lr_grid``."""
    grid = method_file(method).get(LR_GRID)
    where = f"configs/methods/{method}.yaml"
    if grid is None:
        raise ConfigError(
            f"{where}: no '{LR_GRID}' to tune from; add one (e.g. the method's lr x1/3, x1, x3), "
            "or compare without --tune"
        )
    if (
        not isinstance(grid, list)
        or not grid
        or not all(isinstance(x, int | float) and not isinstance(x, bool) and 0 < x < 1 for x in grid)
    ):
        raise ConfigError(f"{where}: '{LR_GRID}' must be a non-empty list of learning rates in (0, 1)")
    return [float(x) for x in grid]


def method_option_defaults(method: str) -> dict[str, Any]:
    """Every option a method reads, with its default: the only place these defaults are written."""
    return method_defaults(method).get("method_options") or {}


def method_names_with_defaults() -> dict[str, dict[str, Any]]:
    """Every method's option defaults (presets left out: they read their method's options)."""
    presets = method_presets()
    return {name: method_option_defaults(name) for name in method_file_names() if name not in presets}


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}


def _same_kind(value: Any, default: Any) -> bool:
    """Whether an option value has its YAML default's type (an unset default takes anything; a number
    default takes an integer; a name or a list of names may be given either way)."""
    if default is None or value is None:
        return True
    if isinstance(value, bool) or isinstance(default, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    if isinstance(default, str | list):
        return isinstance(value, str | list)
    return isinstance(value, type(default))


def check_method_options(method: str, options: dict[str, Any], source: str) -> None:
    """Unknown options and values of another type than the option's YAML default are config errors."""
    defaults = method_option_defaults(method)
    # The defaults file lists every option the method reads: a typo (``rank`` for ``r``) must not
    # silently train with the default instead.
    unknown = set(options) - set(defaults)
    if unknown:
        # A training setting given as a method option (QLoRA's former gradient_checkpointing): say where.
        settings = [key for key in sorted(unknown) if key in CONFIG_FIELDS]
        hint = "".join(f"; '{key}' is a training setting: {flag_name(key)}" for key in settings)
        raise ConfigError(
            f"{source}: method_options: unknown option(s) for '{method}': "
            f"{', '.join(sorted(unknown))}; known: {', '.join(sorted(defaults)) or 'none'}{hint}"
        )
    for key, value in options.items():
        if not _same_kind(value, defaults[key]):
            expected = type(defaults[key])
            raise ConfigError(
                f"{source}: {method} option '{key}' must be {_TYPE_NAMES.get(expected, expected.__name__)}, "
                f"got {value!r}"
            )


def own_validation(train: str) -> str | None:
    """The validation set that goes with ``train`` (``DataRef.own_validation``: a bundled name's own
    validation split; none for a user's file or data set). A source that names nothing known is left to
    the data load to report, with the rest of the data errors."""
    from mcqtune.data import DataError, DataRef

    try:
        return DataRef.parse(train, "train").own_validation()
    except DataError:
        return None


def build_config(
    flags: dict[str, Any],
    config_file: str | None = None,
    base: TrainConfig | None = None,
    defaults: dict[str, Any] | None = None,
) -> TrainConfig:
    """Resolve the layers: field defaults (or ``base``) < the method's YAML < ``defaults`` (compare's
    budget) < the user's YAML < ``flags``; flags whose value is None were not given."""
    user = read_yaml(config_file) if config_file else {}
    method = flags.get("method") or user.get("method") or (base.method if base else TrainConfig.method)
    config = base or TrainConfig()
    config = apply_overrides(config, {"method": method}, "flags")
    # A registered name only: the name also picks a file under configs/methods/ (no path tricks).
    config.validate_method(COMMAND_LINE if flags.get("method") else str(config_file or "config"))
    config = apply_overrides(config, method_defaults(method), f"configs/methods/{method}.yaml")
    if defaults:
        config = apply_overrides(config, defaults, "defaults")
    if user:
        config = apply_overrides(config, user, str(config_file))
    given = {k: v for k, v in flags.items() if v is not None}
    config = apply_overrides(config, given, COMMAND_LINE)
    if config.validation == AUTO:
        config = dataclasses.replace(config, validation=own_validation(config.train))
    config.validate(str(config_file) if config_file else COMMAND_LINE, from_flags=given)
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
