"""Settings that describe themselves: a dataclass field made with :func:`setting` carries its help text,
choices, check and default, so a command's flags, its ``--help`` and its validation are all derived from
one description (``config.TrainConfig`` for train and compare; the small dataclasses beside each command
under ``cli/`` for the others). The one rule for numbers ("must be a positive integer") lives here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import field, fields
from typing import Any, get_args, get_type_hints

from mcqtune.errors import ConfigError

# What a ``check`` allows: the rule and the words an error uses for it.
CHECKS: dict[str, tuple[Callable[[float], bool], str]] = {
    "positive": (lambda v: v > 0, "a positive {kind}"),
    "non_negative": (lambda v: v >= 0, "a number >= 0"),
    "ratio": (lambda v: 0 <= v < 1, "in [0, 1)"),
}


def setting(
    default: Any = None,
    help: str = "",
    *,
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None,
    check: str | None = None,
    none_means: str | Callable[[], str] | None = None,
    tags: Iterable[str] = (),
    flag: bool | str = True,
    required: bool = False,
    factory: Callable[[], Any] | None = None,
    metavar: str | None = None,
    repeat: bool = False,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A settings field with its facts: ``check`` is a key of :data:`CHECKS`; ``none_means`` says what an
    unset (None) value does, for ``--help`` (a callable: read when the help is built); ``flag``: False for
    no command-line flag, a string for a flag name other than the key's; ``required``: no default;
    ``repeat``: the flag may be given several times (a list); ``metavar``: how ``--help`` names the value;
    ``aliases``: further flags for it (an older name kept working)."""
    if check is not None and check not in CHECKS:
        raise ValueError(f"unknown check {check!r}")
    metadata = {
        "help": help,
        "choices": choices,
        "check": check,
        "none_means": none_means,
        "tags": frozenset(tags),
        "flag": flag,
        "required": required,
        "metavar": metavar,
        "repeat": repeat,
        "aliases": tuple(aliases),
    }
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def field_flag(f: dataclasses.Field) -> str:
    """The command-line flag of a settings field (its own name unless the field names one)."""
    flag = f.metadata.get("flag", True)
    return flag if isinstance(flag, str) else flag_name(f.name)


def field_choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


def scalar_type(cls: type, key: str) -> type:
    """The scalar type of a field (``int | None`` -> int, ``list[str]`` -> list)."""
    annotation = get_type_hints(cls)[key]
    args = [a for a in get_args(annotation) if a is not type(None)]
    kind = args[0] if args and type(None) in get_args(annotation) else annotation
    return getattr(kind, "__origin__", None) or kind


def format_value(value: Any) -> str:
    """A default as ``--help`` shows it: on/off for switches, plain numbers and names, lists as a,b,c."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def describe_default(f: dataclasses.Field, value: Any = dataclasses.MISSING) -> str:
    """What ``--help`` says a field defaults to: the value, or what an unset value means."""
    if value is dataclasses.MISSING:
        value = field_default(f)
    if f.metadata.get("required"):
        return "required"
    if value is None or value == []:
        means = f.metadata.get("none_means")
        return f"default: {(means() if callable(means) else means) or 'none'}"
    return f"default: {format_value(value)}"


def check_value(value: Any, check: str | None) -> str | None:
    """Why ``value`` fails ``check`` ("must be a positive integer, got 0"), None when it passes."""
    if check is None or value is None:
        return None
    rule, words = CHECKS[check]
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and rule(value):
        return None
    kind = "integer" if isinstance(value, int) and not isinstance(value, bool) else "number"
    return f"must be {words.format(kind=kind)}, got {value}"


def check_fields(instance: Any, where: Callable[[str], str]) -> None:
    """Every field's choices and check; ``where(key)`` names the key in the error (its flag, or the file
    and key)."""
    for f in fields(instance):
        value = getattr(instance, f.name)
        choices = field_choices(f)
        if choices and value is not None and value not in choices:
            raise ConfigError(f"{where(f.name)} must be one of {', '.join(choices)}, got '{value}'")
        why = check_value(value, f.metadata.get("check"))
        if why:
            raise ConfigError(f"{where(f.name)} {why}")


def keys_tagged(cls: type, tag: str) -> tuple[str, ...]:
    """The keys of ``cls`` carrying ``tag``, in field order."""
    return tuple(f.name for f in fields(cls) if tag in f.metadata.get("tags", ()))


def flag_keys(cls: type) -> tuple[str, ...]:
    """The keys of ``cls`` with a command-line flag of their own."""
    return tuple(f.name for f in fields(cls) if f.metadata.get("flag", True) is not False)
