"""Every option of every ``--help`` shows a default or "required", and each shown default is the value
actually used (issue 11 item 3, issue 13 item 6): help text and behaviour cannot drift apart."""

from __future__ import annotations

import argparse
import re

import pytest

from mcqtune.cli.main import build_parser
from mcqtune.compare.plan import CompareSettings, plan_configs
from mcqtune.config import (
    CONFIG_FIELDS,
    PER_METHOD,
    TAG_COMPARE,
    build_config,
    flag_keys,
    flag_name,
    keys_tagged,
)
from mcqtune.method_files import method_option_flags
from mcqtune.methods import METHODS

SHOWN = re.compile(r"\((default: (?P<default>.*)|required)\)$", re.S)


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*words, name))


COMMANDS = dict(_commands(build_parser()))


def _options(words: tuple[str, ...]) -> dict[str, str]:
    """Each option's help as ``--help`` prints it (defaults expanded), by its first long flag."""
    parser = COMMANDS[words]
    formatter = parser._get_formatter()
    return {
        next(f for f in action.option_strings if f.startswith("--")): (
            formatter._expand_help(action) if action.help else ""
        )
        for action in parser._actions
        if action.option_strings and action.default != argparse.SUPPRESS
    }


def _shown(help_text: str) -> str:
    match = SHOWN.search(help_text)
    assert match, f"no default shown: {help_text!r}"
    return match["default"] or "required"


def _value(text: str):
    """A shown default back as a value: on/off, numbers, a,b,c lists, else the text."""
    if text in ("on", "off"):
        return text == "on"
    if "," in text:
        return text.split(",")
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@pytest.mark.parametrize("words", list(COMMANDS), ids=lambda w: " ".join(w) or "mcqtune")
def test_every_option_shows_a_default_or_required(words):
    for flag, help_text in _options(words).items():
        assert SHOWN.search(help_text.replace("\n", " ")), f"mcqtune {' '.join(words)} {flag}: {help_text!r}"


def _check_config_flag(key: str, shown: str, config) -> None:
    used = getattr(config, key)
    field = CONFIG_FIELDS[key]
    if key == "validation":  # auto: the training data's own validation split
        assert shown == "auto" and used == config.train, (shown, used)
    elif field.metadata["required"]:
        assert shown == "required" and used is not None
    elif used is None:
        assert shown == field.metadata["none_means"]
    else:
        assert _value(shown) == used, f"{flag_name(key)}: help says {shown}, {used!r} is used"


def test_train_help_defaults_are_the_values_used(tmp_path):
    options = _options(("train",))
    config = build_config({"output": str(tmp_path)})
    for key in flag_keys():
        if CONFIG_FIELDS[key].metadata["none_means"] == PER_METHOD:
            assert _shown(options[flag_name(key)]) == PER_METHOD
            for method in METHODS:
                assert getattr(build_config({"method": method}), key) is not None, (key, method)
            continue
        _check_config_flag(key, _shown(options[flag_name(key)]), config)
    assert _value(_shown(options["--max-length"])) == config.prompt_config().max_length


def test_method_option_help_defaults_are_the_values_used():
    options = _options(("train",))
    for flag, key, _ in method_option_flags():
        help_text = options[flag]
        methods = help_text.split(":", 1)[0].split("/")
        shown = _shown(help_text)
        for method in methods:
            used = build_config({"method": method}).method_options[key]
            per_method = dict(part.split(" ", 1) for part in shown.split(", ")) if ", " in shown else {}
            assert _value(per_method.get(method, shown)) == used, (flag, method, shown, used)


def test_compare_help_shows_compares_own_budget(tmp_path):
    """compare's defaults (its budget, --quick's) are the ones compare uses, not train's."""
    options = _options(("compare",))
    plans = {
        quick: plan_configs(CompareSettings(output=tmp_path, methods=["lora"], quick=quick))["zero_shot"]
        for quick in (False, True)
    }
    names = {"train": "--data"}
    for key in keys_tagged(TAG_COMPARE):
        shown, _, quick_shown = _shown(options[names.get(key, flag_name(key))]).partition("; --quick: ")
        _check_config_flag(key, shown, plans[False])
        _check_config_flag(key, quick_shown or shown, plans[True])
    assert "(default: 150; --quick: 16)" in options["--max-steps"]
    assert "(default: 50; --quick: 8)" in options["--eval-steps"]
    assert "(default: 64; --quick: 24)" in options["--eval-limit"]


def test_plain_option_defaults_are_the_parsers(tmp_path):
    """Options outside TrainConfig (eval, predict, export...) show the argparse default they get."""
    for words in [("eval",), ("predict",), ("export",), ("data", "check")]:
        parser = COMMANDS[words]
        for action in parser._actions:
            if not action.option_strings or action.default in (None, argparse.SUPPRESS) or action.required:
                continue
            shown = _shown(parser._get_formatter()._expand_help(action))
            expected = action.default
            assert _value(shown) == expected or shown == str(expected), (words, action.dest, shown)


def test_train_method_lists_the_registered_methods():
    help_text = _options(("train",))["--method"]
    assert all(name in help_text for name in METHODS)
