"""The command line's parser pieces: a parser whose mistakes are one line, a help formatter that always
shows the default, and flags derived from settings dataclasses (:mod:`mcqtune.settings`).

A command's flags are the fields of one or more settings dataclasses; :func:`add_settings` turns each field
into a flag (type, choices, help ending with the default) and :func:`check_settings` applies the fields'
checks to what was parsed, naming the flag. Nothing here imports torch: ``mcqtune --help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from mcqtune.settings import (
    check_value,
    describe_default,
    field_choices,
    field_default,
    field_flag,
    format_value,
    scalar_type,
)


class UsageError(Exception):
    """A command line argparse cannot parse; ``main`` prints it and returns the user-error exit code."""


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default or "(required)": a newcomer should not have to guess."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default == argparse.SUPPRESS:
            return text
        if "(default" in text or "(required" in text:
            return text
        if action.required:
            return f"{text} (required)"
        if isinstance(action.default, bool):
            return f"{text} (default: {'on' if action.default else 'off'})"
        return f"{text} (default: {'%(default)s' if action.default is not None else 'none'})"


class Parser(argparse.ArgumentParser):
    """A usage mistake is one line and a pointer to ``--help``, not the whole usage first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: error: {message}\nsee: {self.prog} --help")


class Listed:
    """Names joined for a help text only when the help is shown, so building the parser does not
    import every method plug-in; the values are checked by the settings, with their own message."""

    def __init__(self, load: Callable[[], tuple[str, ...]]):
        self.load = load

    def __str__(self) -> str:
        return ", ".join(self.load())


Target = argparse.ArgumentParser | argparse._ArgumentGroup


def add_settings(
    target: Target,
    cls: type,
    keys: tuple[str, ...] | None = None,
    *,
    layered: bool = False,
    defaults: dict[str, Any] | None = None,
    quick: dict[str, Any] | None = None,
    names: dict[str, str] | None = None,
) -> None:
    """One flag per field of the settings dataclass ``cls`` (``keys``: only those, in that order).

    ``layered``: the value may also come from a YAML file (TrainConfig), so a flag not given parses as
    None and a switch gets a ``--no-`` form; the help still shows the value actually used: ``defaults``
    (compare's budget) or the field's own, and ``quick``'s where it differs. ``names``: a flag name other
    than the field's for this command (compare's ``--data`` for ``train``)."""
    by_name = {f.name: f for f in fields(cls)}
    defaults, quick, names = defaults or {}, quick or {}, names or {}
    for key in keys if keys is not None else tuple(by_name):
        f = by_name[key]
        if f.metadata.get("flag", True) is False:
            continue
        kind = scalar_type(cls, key)
        default = field_default(f)
        kwargs: dict[str, Any] = {"dest": key, "default": None if layered else default}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if layered else "store_true"
        elif f.metadata.get("repeat"):
            kwargs["action"] = "append"
        elif kind is list:
            kwargs["nargs"] = "+"
        elif kind in (int, float):
            kwargs["type"] = kind
        if f.metadata.get("metavar"):
            kwargs["metavar"] = f.metadata["metavar"]
        if f.metadata.get("required") and not layered:
            kwargs["required"] = True
        text = f.metadata["help"]
        choices = f.metadata.get("choices")
        if callable(choices) and not layered:  # read now: only this command's parser is being built
            choices = choices()
        if callable(choices):  # e.g. the registered methods: listed in the help, checked by the config
            text += "; one of: %(listed)s"
        elif choices is not None:
            kwargs["choices"] = choices
        shown = describe_default(f, defaults[key]) if key in defaults else describe_default(f)
        if key in quick and quick[key] != defaults.get(key, default):
            shown += f"; --quick: {format_value(quick[key])}"
        flags = [names.get(key, field_flag(f)), *f.metadata.get("aliases", ())]
        action = target.add_argument(*flags, help=f"{text} ({shown})", **kwargs)
        action.listed = Listed(choices) if callable(choices) else None  # type: ignore[attr-defined]


def check_settings(args: argparse.Namespace, *classes: type) -> None:
    """The fields' checks and choices applied to the parsed values, each error naming the flag."""
    from mcqtune.errors import ConfigError

    for cls in classes:
        for f in fields(cls):
            value = getattr(args, f.name, None)
            why = check_value(value, f.metadata.get("check"))
            choices = f.metadata.get("choices")
            if why is None and callable(choices) and value is not None and value not in field_choices(f):
                why = f"must be one of {', '.join(field_choices(f) or ())}, got '{value}'"
            if why:
                raise ConfigError(f"{field_flag(f)} {why}")
