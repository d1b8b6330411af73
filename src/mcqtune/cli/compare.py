"""``mcqtune compare``: every method under one budget, each in its own process, one table, plots and an
HTML report; optionally tuned, over several seeds, with paired tests and further evaluation sets."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from mcqtune.settings import setting

HELP = "train every method under one budget; table, plots and an HTML report"
DESCRIPTION = (
    "Train each method (and evaluate zero-shot) with the same data, seed, examples seen and evaluation "
    "set, each in its own process, then write results.json/.csv, PNG plots, report.html and report.md "
    "into --output. A failed method is recorded, not fatal. Default budget: <= 60 min on 2 CPU cores; "
    "--quick: <= 10 min. Precedence: budget < --config < flags."
)


def _tune_choices() -> tuple[str, ...]:
    from mcqtune.compare.plan import TUNE_CHOICES

    return TUNE_CHOICES


def _dev_sizes() -> str:
    from mcqtune.compare.trials import DEV_SIZE, QUICK_DEV_SIZE

    return f"{DEV_SIZE}; --quick: {QUICK_DEV_SIZE}"


@dataclass
class CompareArgs:
    """compare's own flags, beside the TrainConfig keys it shares with train."""

    methods: str | None = setting(
        None,
        "comma-separated methods; a zero-shot row is always added",
        none_means="every registered method, in the methods' own order",
    )
    output: str | None = setting(None, "directory for results, reports and runs/<method>/", required=True)
    config: str | None = setting(None, "YAML with TrainConfig keys applied to every method")
    quick: bool = setting(False, "small budget (<= 10 min): checks the pipeline")
    resume: bool = setting(False, "skip methods already finished in --output")
    permutations: str | None = setting(
        None,
        "also report permutation-averaged accuracy on the final evaluation set (costs K x its time)",
        none_means="cyclic with --objective letter, none otherwise: cloze ignores option order",
        metavar="cyclic|all|K|none",
    )
    method_timeout: float | None = setting(
        None,
        "stop a method after this long (failure)",
        check="positive",
        none_means="no limit",
        metavar="SECONDS",
    )
    tune: str | None = setting(
        None,
        "choose each method's learning rate from its lr_grid (configs/methods/<name>.yaml) as Optuna "
        "trials, bad ones pruned, on a dev split of the training data, never on the validation rows",
        choices=_tune_choices,
        none_means="off: each method's own lr",
    )
    dev_size: int | None = setting(
        None,
        "--tune: training rows held out as the dev split",
        check="positive",
        none_means=_dev_sizes,
        metavar="N",
    )
    seeds: int = setting(
        1,
        "final runs per method (seeds seed, seed+1, ...); the table shows mean and spread and tests every "
        "method against the best on the same questions",
        check="positive",
        metavar="N",
    )
    eval_data: list[str] | None = setting(
        None,
        "further data sets (files or bundled names; a bundled name's validation split) every run and "
        "zero-shot are also scored on, each with its own majority baseline and CI",
        metavar="DATA",
    )
    budget: str | None = setting(
        None,
        "equal optimizer steps per method, or equal training time (time=5m, time=90s): each method then "
        "trains as many steps as fit",
        none_means="steps",
        metavar="steps|time=DURATION",
    )
    from_search: str | None = setting(
        None,
        "train the best settings a `mcqtune search --output OUTPUT` found (OUTPUT/best/<method>.yaml) with "
        "--seeds and score them on validation with the paired tests",
        none_means="each method's own defaults",
        metavar="OUTPUT",
    )
    quiet: bool = setting(False, "do not echo each method's log lines")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mcqtune.cli.backend_args import add_backend_args
    from mcqtune.cli.data_args import add_data_args
    from mcqtune.cli.parsing import add_settings

    add_settings(parser, CompareArgs, ("methods", "output", "config"))
    add_budget_flags(parser)
    add_settings(
        parser,
        CompareArgs,
        tuple(k for k in CompareArgs.__dataclass_fields__ if k not in ("methods", "output", "config")),
    )
    add_backend_args(parser)
    add_data_args(parser)


def add_budget_flags(parser: argparse.ArgumentParser) -> None:
    """The training settings every run of a compare (or a search) shares, as flags: TrainConfig's keys
    tagged for compare, their help showing compare's budget and --quick's (``--data`` for ``train``)."""
    from mcqtune.cli.parsing import add_settings
    from mcqtune.compare.plan import DEFAULT_BUDGET, QUICK_BUDGET
    from mcqtune.config import TAG_COMPARE, TrainConfig, keys_tagged

    add_settings(
        parser,
        TrainConfig,
        keys_tagged(TAG_COMPARE),
        layered=True,
        defaults=DEFAULT_BUDGET,
        quick=QUICK_BUDGET,
        names={"train": "--data"},
    )


def permutations_for(flag: str | None, objective: str | None) -> str | None:
    """Letter scoring depends on option order, so a letter compare reports cyclic permutations unless
    ``--permutations none``; cloze scoring is order-free (its permutation accuracy is its accuracy)."""
    if flag is not None:
        return None if flag.lower() == "none" else flag
    return "cyclic" if objective == "letter" else None


def run(args: argparse.Namespace) -> int:
    import shlex

    from mcqtune.cli.backend_args import execution_from_args
    from mcqtune.cli.common import command_argv
    from mcqtune.cli.data_args import field_config_from_args
    from mcqtune.cli.parsing import check_settings
    from mcqtune.compare.plan import CompareSettings, parse_budget, parse_methods
    from mcqtune.compare.runner import run_compare
    from mcqtune.config import TAG_COMPARE, keys_tagged

    check_settings(args, CompareArgs)
    settings = CompareSettings(
        output=Path(args.output),
        methods=parse_methods(args.methods),
        config_file=args.config,
        quick=args.quick,
        resume=args.resume,
        overrides={key: getattr(args, key) for key in keys_tagged(TAG_COMPARE)},
        data_fields=field_config_from_args(args),
        method_timeout=args.method_timeout,
        permutations=permutations_for(args.permutations, args.objective),
        tune=args.tune,
        from_search=args.from_search,
        dev_size=args.dev_size,
        seeds=args.seeds,
        eval_data=args.eval_data or [],
        time_budget=parse_budget(args.budget),
        echo=not args.quiet,
        command=shlex.join(["mcqtune", *command_argv(args)]),
        execution=execution_from_args(args),
    )
    result = run_compare(settings)
    failed = [r["method"] for r in result.rows if r["status"] != "ok"]
    if failed:
        print(f"failed (recorded in the table): {', '.join(failed)}", file=sys.stderr)
    return 0
