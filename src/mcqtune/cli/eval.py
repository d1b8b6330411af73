"""``mcqtune eval``: accuracy with its CI, the majority baseline and letter distributions of a base model
or a trained run on a data set (optionally under option permutations and debiased)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mcqtune.cli.common import (
    LoadingArgs,
    ModelArgs,
    add_debias_args,
    add_num_processes,
    add_subset_flag,
    check_scoring_args,
    launch_processes,
    open_predictor,
    run_analyses,
)
from mcqtune.config import ON_BAD_ROWS
from mcqtune.settings import setting

HELP = "accuracy, CI, majority baseline and letter distributions"
DESCRIPTION = "Evaluate the base model or a trained artifact on a data file."


@dataclass
class EvalArgs:
    data: str | None = setting(
        None,
        "data file, bundled name (its validation split), data set directory or hub id; SOURCE:SPLIT names a "
        "split",
        required=True,
    )
    limit: int | None = setting(None, "evaluate only the first N rows", check="positive", none_means="all")
    batch_size: int = setting(16, "questions per scoring batch", check="positive")
    on_bad_rows: str = setting(
        "error", "error: stop at the first bad row; skip: drop and count bad rows", choices=ON_BAD_ROWS
    )
    output: str | None = setting(
        None, "write metrics JSON here; an existing file needs --overwrite", none_means="not written"
    )
    overwrite: bool = setting(False, "replace an existing --output file")
    permutations: str | None = setting(
        None,
        "also score every question under option orders: cyclic rotations, all orders, or the original "
        "plus K-1 random ones; reports order-averaged and circular accuracy",
        metavar="cyclic|all|K",
    )
    report: str | None = setting(None, "write metrics.json, summary.md and PNG charts here", metavar="DIR")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mcqtune.cli.data_args import add_data_args
    from mcqtune.cli.parsing import add_settings

    add_settings(parser, ModelArgs)
    add_settings(parser, LoadingArgs)
    add_settings(parser, EvalArgs)
    add_subset_flag(parser)
    add_num_processes(parser, "processes that each score a share of the questions")
    add_debias_args(parser)
    add_data_args(parser)


def run(args: argparse.Namespace) -> int:
    from mcqtune.atomic import atomic_write_json
    from mcqtune.cli.data_args import field_map_from_args
    from mcqtune.data import DataRef
    from mcqtune.distributed import is_main_process
    from mcqtune.evaluation.metrics import compute_metrics
    from mcqtune.progress import task

    launched = launch_processes(args)
    if launched is not None:
        return launched
    prior = check_scoring_args(args, EvalArgs)
    ref = DataRef.parse(args.data, "validation", args.subset)
    data = ref.load(args.format, field_map_from_args(args), on_bad_rows=args.on_bad_rows, limit=args.limit)
    predictor, run_name = open_predictor(args)
    with task(f"eval ({ref.name})" if is_main_process() else None):
        result = run_analyses(args, predictor, run_name, data.examples, prior, batch_size=args.batch_size)
    if not is_main_process():  # every process scored its share; the main one reports and writes
        return 0
    metrics = compute_metrics(result.scored)
    metrics["data"] = ref.label
    metrics["source"] = data.source
    metrics["model"] = predictor.model_id
    metrics["adapter"] = str(args.run) if args.run else None
    if data.skipped:
        metrics["bad_rows_skipped"] = data.skipped
    metrics.update(result.sections)
    source = f"run {args.run}" if args.run else f"zero-shot {predictor.model_id}"
    title = f"{ref.label}: {source}"
    print_metrics(metrics, title)
    if args.output:
        atomic_write_json(args.output, metrics)
        print(f"wrote {args.output}")
    if args.report:
        from mcqtune.evaluation.report import write_report

        written = write_report(args.report, metrics, title=f"{title} ({metrics['scoring']} scoring)")
        print(f"wrote report {args.report} ({', '.join(p.name for p in written)})")
    return 0


def print_metrics(metrics: dict, title: str) -> None:
    from mcqtune.evaluation.format import (
        format_confusion,
        format_debias_summary,
        format_metrics,
        format_permutation_summary,
    )

    print(format_metrics(metrics, title))
    if metrics.get("letter_bias", {}).get("n"):
        print(format_confusion(metrics["letter_bias"]))
    if "permutations" in metrics:
        print(format_permutation_summary(metrics["permutations"]))
    if "debias" in metrics:
        print(format_debias_summary(metrics["debias"]))
