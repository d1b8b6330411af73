"""``mcqtune search``: the best settings of each PEFT method for the user's data (:mod:`mcqtune.search`).

Its own flags are the fields of :class:`mcqtune.search.settings.SearchSettings` (help, defaults, checks
written there once); the training flags it shares with ``compare`` (data, model, budget) come from
TrainConfig."""

from __future__ import annotations

import argparse
import shlex
import sys

HELP = "find each method's best settings with Optuna; best/<method>.yaml per method"
DESCRIPTION = (
    "Search each method's settings (learning rate, rank, bottleneck, prefix length, ...) with Optuna on a "
    "dev split carved from the training data: one study per method in an RDB storage (SQLite in --output "
    "by default), bad trials pruned at their validation checks, failed trials recorded. Running the same "
    "command again continues the studies; several processes on one storage share the trials. Writes "
    "report.html/.md, search.json, plots/*.png and best/<method>.yaml (a config `mcqtune train --config` "
    "runs as is; `mcqtune compare --from-search OUTPUT` trains them with seeds and scores them on "
    "validation)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mcqtune.cli.compare import add_budget_flags
    from mcqtune.cli.data_args import add_data_args
    from mcqtune.cli.parsing import add_settings
    from mcqtune.search.settings import SearchSettings, flag_keys

    add_settings(parser, SearchSettings, flag_keys())
    add_budget_flags(parser)
    add_data_args(parser)


def run(args: argparse.Namespace) -> int:
    from mcqtune.cli.common import command_argv
    from mcqtune.cli.data_args import field_config_from_args
    from mcqtune.cli.parsing import check_settings
    from mcqtune.config import TAG_COMPARE, keys_tagged
    from mcqtune.search.engine import run_search
    from mcqtune.search.settings import SearchSettings, flag_keys

    check_settings(args, SearchSettings)
    settings = SearchSettings(
        **{key: getattr(args, key) for key in flag_keys()},
        overrides={key: getattr(args, key) for key in keys_tagged(TAG_COMPARE)},
        data_fields=field_config_from_args(args),
        command=shlex.join(["mcqtune", *command_argv(args)]),
    )
    results = run_search(settings)
    empty = [m for m, entry in results["methods"].items() if entry["best"] is None]
    if empty:
        print(f"no finished trial (yet) for: {', '.join(empty)}", file=sys.stderr)
    return 0
