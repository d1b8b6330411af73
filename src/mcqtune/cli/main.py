"""The ``mcqtune`` command line: a module per command under ``cli/``, each with its parser and handler
side by side (``HELP``, ``DESCRIPTION``, ``add_arguments(parser)``, ``run(args)``); this module only
dispatches. Only the chosen command's parser is built, so ``mcqtune --help`` imports no model code.

User errors (bad data, bad config, missing model, wrong artifact) print one clear line and exit 2;
tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType

from mcqtune.cli.parsing import Parser, UsageError

EXIT_USER_ERROR = 2

# Command name -> its module under mcqtune.cli, in the order ``--help`` lists them.
COMMANDS = {
    "data": "data_check",
    "train": "train",
    "eval": "eval",
    "predict": "predict",
    "export": "export",
    "demo": "demo",
    "compare": "compare",
    "search": "search",
    "estimate": "estimate",
    "serve": "serve",
}


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"mcqtune.cli.{COMMANDS[name]}")


def _user_errors() -> tuple[type[BaseException], ...]:
    from mcqtune.errors import UserError

    # OSError: a full disk, a permission denied, a file that vanished: the message names the path.
    return (UserError, OSError)


def build_parser(only: str | None = "all") -> argparse.ArgumentParser:
    """The whole parser (``only="all"``), or every command named with only ``only``'s flags built (None:
    none, for the top-level help)."""
    from mcqtune import __version__

    parser = Parser(
        prog="mcqtune",
        description="Fine-tune causal LMs for multiple-choice QA with PEFT methods; evaluate them honestly.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in COMMANDS:
        module = command_module(name)
        sub = commands.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", None))
        if only in ("all", name):
            module.add_arguments(sub)
        if not sub.get_default("func"):
            sub.set_defaults(func=module.run)
    return parser


def chosen_command(argv: list[str]) -> str | None:
    """The command ``argv`` names (the first word that is one), None when it names none."""
    return next((word for word in argv if word in COMMANDS), None)


def main(argv: list[str] | None = None) -> int:
    words = list(argv) if argv is not None else sys.argv[1:]
    parser = build_parser(chosen_command(words))
    try:
        args = parser.parse_args(words)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USER_ERROR
    args.argv = words
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s"
    )
    from mcqtune.quiet import quiet_libraries

    quiet_libraries()
    try:
        return args.func(args)
    except _user_errors() as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
