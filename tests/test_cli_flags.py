"""The command line's flags survived the redesign (one module per command, flags from settings
dataclasses): every flag a command had before still parses the same way, and ``mcqtune --help`` imports no
model code."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from mcqtune.cli.main import build_parser

BEFORE = json.loads((Path(__file__).parent / "fixtures" / "cli_flags_before_redesign.json").read_text())
# Flags added since: the clearer name of a run directory (--adapter stays as its alias), trackers, skipping
# the step-0 validation.
ADDED = {
    "eval": {"--run", "--subset"},
    "predict": {"--run", "--subset"},
    "data check": {"--subset"},
    "export": {"--run"},
    "serve": {"--run", "--run-dir"},
    "train": {"--report-to", "--subset", "--validate-at-start", "--no-validate-at-start"},
    "compare": {"--report-to", "--subset", "--from-search"},
}


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*words, name))


def _flags(parser: argparse.ArgumentParser) -> dict[str, dict]:
    flags = {}
    for action in parser._actions:
        if action.option_strings and action.default != argparse.SUPPRESS:
            for flag in action.option_strings:
                flags[flag] = {
                    "takes_value": action.nargs != 0,
                    "repeat": isinstance(action, argparse._AppendAction),
                    "choices": list(action.choices) if action.choices else None,
                }
        elif not action.option_strings and not isinstance(action, argparse._SubParsersAction):
            flags[action.dest] = {"positional": True}
    return flags


def test_every_flag_of_before_the_redesign_parses_the_same_way():
    now = {" ".join(words) or "mcqtune": _flags(p) for words, p in _commands(build_parser())}
    assert set(BEFORE) <= set(now), set(BEFORE) - set(now)
    for command, flags in BEFORE.items():
        for names, before in flags.items():
            for flag in names.split():
                assert flag in now[command], f"mcqtune {command}: {flag} is gone"
                assert now[command][flag] == before, (command, flag, now[command][flag], before)
        old = {flag for names in flags for flag in names.split()}
        added = set(now[command]) - old
        assert added <= ADDED.get(command, set()), f"mcqtune {command}: unexpected new flags {added}"


def test_top_level_help_imports_no_model_code():
    code = (
        "import sys\nfrom mcqtune.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "HEAVY []" in out, out
