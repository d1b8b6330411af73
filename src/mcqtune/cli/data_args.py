"""The data-reading flags every command that reads a data file shares: one definition, added to each."""

from __future__ import annotations

import argparse
from typing import Any

from mcqtune.data.fields import ANSWER_BASE_FLAG, ANSWER_BASES, FIELD_FLAG, FIELD_KEYS, STRIP_FLAG, FieldMap


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "data fields", "name your own columns when no layout fits the file (see docs/DATA.md)"
    )
    group.add_argument(
        FIELD_FLAG,
        action="append",
        dest="field",
        metavar="KEY=COLUMN",
        help=f"the column holding KEY, one of {', '.join(FIELD_KEYS)}; repeat for several; choices may "
        "list one column per option (choices=opa,opb,opc) (default: the layout's own names)",
    )
    group.add_argument(
        ANSWER_BASE_FLAG,
        type=int,
        choices=ANSWER_BASES,
        dest="answer_base",
        help="integer answers count options from 0 or from 1 (default: the layout's convention, else "
        "what the data shows; an error says when it cannot tell)",
    )
    group.add_argument(
        STRIP_FLAG,
        action="store_true",
        dest="strip_query_prefix",
        help="drop a leading 'Question:' and a trailing 'Answer:' from each question, as "
        "lm-evaluation-harness queries carry them (default: off)",
    )


def field_map_from_args(args: argparse.Namespace) -> FieldMap:
    return FieldMap.from_settings(args.field, args.answer_base, args.strip_query_prefix)


def field_config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The same flags as train-config keys; a flag not given is None so the YAML's value stays."""
    settings = field_map_from_args(args).to_settings()
    return {
        "fields": settings["fields"] or None,
        "answer_base": settings["answer_base"],
        "strip_query_prefix": settings["strip_query_prefix"] or None,
    }
