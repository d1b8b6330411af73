"""``mcqtune data check``: rows, options, answer letters, majority share, token lengths, every problem."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mcqtune.config import data_formats
from mcqtune.settings import setting

NAME = "data"
HELP = "inspect and validate MCQA data files"
CHECK_HELP = "rows, options per question, answer letters, majority share, token lengths, all problems"
CHECK_DESCRIPTION = "Validate a data file and summarise it. Exits 1 if any row has a problem."


@dataclass
class DataCheckArgs:
    split: str = setting("train", "split of a bundled dataset", choices=("train", "validation"))
    format: str = setting("auto", "data format", choices=data_formats())
    model: str | None = setting(None, "tokenizer for token-length percentiles", none_means="bundled")
    no_tokens: bool = setting(False, "skip token-length percentiles (no model load)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mcqtune.cli.parsing import Parser

    commands = parser.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    check = commands.add_parser("check", help=CHECK_HELP, description=CHECK_DESCRIPTION)
    add_check_arguments(check)
    check.set_defaults(func=run)


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    from mcqtune.cli.common import add_subset_flag
    from mcqtune.cli.data_args import add_data_args
    from mcqtune.cli.parsing import add_settings

    parser.add_argument(
        "file",
        help="data file, bundled name (medmcqa, arc_easy), saved or hub-layout data set directory, or hub "
        "id; SOURCE:SPLIT names a split",
    )
    add_settings(parser, DataCheckArgs)
    add_subset_flag(parser)
    add_data_args(parser)


def run(args: argparse.Namespace) -> int:
    from mcqtune.cli.data_args import field_map_from_args
    from mcqtune.data import DataRef, check_file
    from mcqtune.prompt import PromptEncoder

    token_length = None
    if not args.no_tokens:
        from mcqtune.models import load_tokenizer, resolve_model

        encoder = PromptEncoder(load_tokenizer(resolve_model(args.model)))
        token_length = encoder.letter_prompt_length
    report = check_file(
        DataRef.parse(args.file, args.split, args.subset),
        args.format,
        field_map=field_map_from_args(args),
        token_length=token_length,
    )
    print(report.format_text())
    return 1 if report.problems else 0
