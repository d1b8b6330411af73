"""``mcqtune search``: the best PEFT method and its settings for the user's data (mcqtune.search).

Its own flags come from :class:`mcqtune.search.settings.SearchSettings` (help, defaults and choices are
written there once); the training flags shared with ``compare`` (data, model, budget) from TrainConfig.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, get_args, get_type_hints

DESCRIPTION = (
    "Search each method's settings (learning rate, rank, bottleneck, prefix length, ...) with Optuna on a "
    "dev split carved from the training data: one study per method in an RDB storage (SQLite in --output "
    "by default), bad trials pruned at their validation checks, failed trials recorded. Running the same "
    "command again continues the studies; several processes on one storage share the trials. Writes "
    "report.html/.md, search.json, plots/*.png and best/<method>.yaml (a config `mcqtune train --config` "
    "runs as is; `mcqtune compare --from-search OUTPUT` trains them with seeds and scores them on "
    "validation)."
)


def _scalar_type(annotation: Any) -> type:
    """``int | None`` -> int; a path is typed as a string."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    base = args[0] if args else annotation
    return str if base is Path else base


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per SearchSettings field marked as a flag, typed from its annotation."""
    from mcqtune.config import format_value
    from mcqtune.search.settings import SearchSettings, flag_fields

    hints = get_type_hints(SearchSettings)
    for f in flag_fields():
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        if meta["required"]:
            parser.add_argument(flag, required=True, help=f"{meta['help']} (required)")
            continue
        shown = meta["none_means"] if f.default is None else format_value(f.default)
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "default": f.default,
            "help": f"{meta['help']} (default: {shown})",
        }
        kind = _scalar_type(hints[f.name])
        if kind is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = kind
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
        parser.add_argument(flag, **kwargs)


def register(subparsers) -> None:
    """Add the ``search`` command to ``mcqtune``'s subcommands."""
    from mcqtune.cli.config_args import add_config_flags
    from mcqtune.cli.data_args import add_data_args
    from mcqtune.compare.plan import DEFAULT_BUDGET, QUICK_BUDGET
    from mcqtune.config import TAG_COMPARE, keys_tagged

    parser = subparsers.add_parser(
        "search",
        help="find each method's best settings with Optuna; best/<method>.yaml",
        description=DESCRIPTION,
    )
    _add_settings_flags(parser)
    add_config_flags(
        parser, keys_tagged(TAG_COMPARE), DEFAULT_BUDGET, QUICK_BUDGET, names={"train": "--data"}
    )
    add_data_args(parser)
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    from mcqtune.cli.config_args import config_flags
    from mcqtune.cli.data_args import field_config_from_args
    from mcqtune.config import TAG_COMPARE, keys_tagged
    from mcqtune.search.settings import SearchSettings, flag_fields

    given = {f.name: getattr(args, f.name) for f in flag_fields()}
    return SearchSettings(
        **given,
        overrides=config_flags(args, keys_tagged(TAG_COMPARE)),
        data_fields=field_config_from_args(args),
        command=shlex.join(["mcqtune", *getattr(args, "argv", [])]),
    )


def run(args: argparse.Namespace) -> int:
    from mcqtune.search.engine import run_search

    results = run_search(settings_from_args(args))
    empty = [m for m, entry in results["methods"].items() if entry["best"] is None]
    if empty:
        print(f"no finished trial (yet) for: {', '.join(empty)}", file=sys.stderr)
    return 0
