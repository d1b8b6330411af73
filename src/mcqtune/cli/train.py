"""``mcqtune train``: one method on MCQA data; flags from TrainConfig, the method files and TrainArgs."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from mcqtune.cli.common import LoadingArgs, add_num_processes, command_argv, launch_processes
from mcqtune.prompt import PromptConfig
from mcqtune.settings import setting

HELP = "fine-tune with one method and save its artifact"
DESCRIPTION = "Train a method on MCQA data. Precedence: method defaults < --config YAML < flags."


@dataclass
class TrainArgs:
    """train's own flags, beside TrainConfig's keys."""

    config: str | None = setting(None, "YAML file with any TrainConfig keys (see configs/)")
    no_validation: bool = setting(False, "train without validation")
    max_length: int | None = setting(
        None,
        "max tokens per sequence; the question is shortened first",
        none_means=str(PromptConfig.max_length),
    )
    train_on_prompt: bool = setting(False, "letter objective: loss on prompt too")
    option: list[str] | None = setting(None, "method option, e.g. r=8", repeat=True, metavar="KEY=VALUE")
    quiet: bool = setting(False, "no progress bar")
    resume: bool = setting(
        False, "continue from the last checkpoint in --output (re-running the same command does too)"
    )
    overwrite: bool = setting(False, "replace a finished or different run in --output")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mcqtune.cli.data_args import add_data_args
    from mcqtune.cli.parsing import add_settings
    from mcqtune.config import TrainConfig, flag_keys

    add_settings(parser, TrainConfig, flag_keys(), layered=True)
    add_settings(parser, TrainArgs)
    add_method_option_flags(
        parser.add_argument_group("method options", "shortcuts for --option (docs/METHODS.md)")
    )
    add_settings(parser, LoadingArgs)
    add_num_processes(parser, "data-parallel training processes; --batch-size is per process")
    add_data_args(parser)


def add_method_option_flags(group: argparse._ArgumentGroup) -> None:
    """One flag per option a method file gives a flag to (``flags:``); help, type and default are read
    from the methods' YAML: every method that reads the option is named with its default."""
    from mcqtune.config import method_names_with_defaults
    from mcqtune.method_files import method_option_flags
    from mcqtune.settings import format_value

    defaults = method_names_with_defaults()
    for flag, key, text in method_option_flags():
        readers = {m: options[key] for m, options in defaults.items() if key in options}
        values = set(map(format_value, readers.values()))
        shown = (
            values.pop()
            if len(values) == 1
            else ", ".join(f"{m} {format_value(v)}" for m, v in readers.items())
        )
        kinds = {type(v) for v in readers.values()}
        # A list of names is typed as "a,b,c"; numbers keep the YAML's type (an int default: int).
        kind = next(
            (k for k in (bool, int, float) if kinds <= {k} or (k is float and kinds <= {int, float})), str
        )
        kwargs: dict[str, Any] = (
            {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": kind}
        )
        group.add_argument(
            flag, dest=option_dest(flag), help=f"{'/'.join(readers)}: {text} (default: {shown})", **kwargs
        )


def option_dest(flag: str) -> str:
    return "option_flag_" + flag.lstrip("-").replace("-", "_")


def method_option_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The method options given as their own flags (None: not given)."""
    from mcqtune.method_files import method_option_flags as declared

    options = {}
    for flag, key, _ in declared():
        value = getattr(args, option_dest(flag), None)
        if value is not None:
            options[key] = value
    return options


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the flags, the ``--config`` YAML and the method's defaults make together."""
    import dataclasses

    from mcqtune.cli.common import parse_option_pairs
    from mcqtune.cli.data_args import field_config_from_args
    from mcqtune.config import build_config, flag_keys

    flags = {key: getattr(args, key) for key in flag_keys()} | field_config_from_args(args)
    options = {**method_option_flags(args), **parse_option_pairs(args.option)}
    if options:
        flags["method_options"] = options
    if args.train_on_prompt:
        flags["prompt"] = {"train_on_prompt": True}
    if args.max_length is not None:
        flags["prompt"] = {**flags.get("prompt", {}), "max_length": args.max_length}
    config = build_config(flags, args.config)
    if args.no_validation:
        config = dataclasses.replace(config, validation=None)
    return config


def run(args: argparse.Namespace) -> int:
    from mcqtune.cli.common import warn_unsafe_loading
    from mcqtune.training.api import TrainingInterrupted, train

    launched = launch_processes(args)
    if launched is not None:
        return launched
    config = config_from_args(args)
    warn_unsafe_loading(args)
    try:
        train(
            config,
            show_progress=not args.quiet,
            resume=args.resume,
            overwrite=args.overwrite,
            allow_pickle=args.allow_pickle,
            trust_remote_code=args.trust_remote_code,
        )
    except TrainingInterrupted as stop:
        print_resume_command(args, stop)
        return 130
    return 0


def print_resume_command(args: argparse.Namespace, stop: Exception) -> None:
    """After Ctrl-C: the command that continues the run, printed once for the launch."""
    import shlex

    from mcqtune.distributed import is_main_process, launched_processes

    argv = [a for a in command_argv(args) if a != "--overwrite"]
    argv += [] if "--resume" in argv else ["--resume"]
    if launched_processes() > 1 and args.num_processes is None:  # started by a launcher
        argv += ["--num-processes", str(launched_processes())]
    if is_main_process():
        print(f"\n{stop}\nresume with:\n    {shlex.join(['mcqtune', *argv])}", file=sys.stderr)
