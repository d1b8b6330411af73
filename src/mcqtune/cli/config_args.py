"""The TrainConfig flags several commands share (train, compare, search, estimate): one flag per config
key, typed, with its help, choices and default read from the field (config.py's ``setting``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def config_flags(args: argparse.Namespace, keys: tuple[str, ...]) -> dict[str, Any]:
    """The TrainConfig keys given on the command line (None: not given)."""
    return {key: getattr(args, key) for key in keys}


class Listed:
    """Names joined for a help text only when the help is shown, so building the parser does not
    import every method plug-in; the values are checked by the config, with its own message."""

    def __init__(self, load: Callable[[], tuple[str, ...]]):
        self.load = load

    def __str__(self) -> str:
        return ", ".join(self.load())


def add_config_flags(
    parser: argparse.ArgumentParser,
    keys: tuple[str, ...],
    defaults: dict[str, Any] | None = None,
    quick: dict[str, Any] | None = None,
    names: dict[str, str] | None = None,
) -> None:
    """One flag per TrainConfig key, typed, with its choices and help from the field. The argparse
    default is None ("not given", so --config and the method's YAML still apply); the help shows the
    value actually used: ``defaults`` (compare's budget) or the field's own, and ``quick``'s if different."""
    from mcqtune.config import CONFIG_FIELDS, describe_default, field_type, flag_name, format_value

    defaults, quick, names = defaults or {}, quick or {}, names or {}
    for key in keys:
        f = CONFIG_FIELDS[key]
        kind = field_type(key)
        kwargs: dict[str, Any] = {"dest": key, "default": None}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
        flag = names.get(key, flag_name(key))
        text = f.metadata["help"]
        choices = f.metadata["choices"]
        if callable(choices):  # e.g. the registered methods: listed in the help, checked by the config
            text += "; one of: %(listed)s"
        elif choices is not None:
            kwargs["choices"] = choices
        shown = describe_default(key, defaults.get(key, f.default))
        if key in quick and quick[key] != defaults.get(key, f.default):
            shown += f"; --quick: {format_value(quick[key])}"
        action = parser.add_argument(flag, help=f"{text} ({shown})", **kwargs)
        action.listed = Listed(choices) if callable(choices) else None  # type: ignore[attr-defined]
