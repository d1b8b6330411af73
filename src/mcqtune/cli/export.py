"""``mcqtune export``: a trained run as a plain Hugging Face model directory (LoRA/QLoRA merged)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mcqtune.cli.common import RUN_DIR_HELP
from mcqtune.settings import setting

HELP = "merge a LoRA/QLoRA run (or save a full/subset run) as a plain Hugging Face model dir"
DESCRIPTION = (
    "Write a plain Hugging Face model directory (safetensors + tokenizer) that loads without peft, "
    "bitsandbytes or mcqtune. LoRA is merged into the base; QLoRA is dequantized to fp32 and merged. The "
    "merged model's option scores are checked against the run's on a few validation questions before "
    "anything is written."
)


@dataclass
class ExportArgs:
    run: str | None = setting(None, RUN_DIR_HELP, required=True, aliases=("--adapter",), metavar="DIR")
    output: str | None = setting(None, "the model directory to write", required=True)
    dtype: str = setting("fp32", "weights dtype", choices=("fp32", "bf16"))
    check_questions: int = setting(
        8, "validation questions to compare on (0: no check)", check="non_negative"
    )
    tolerance: float | None = setting(
        None, "largest allowed option-score difference, nats", check="non_negative", none_means="per method"
    )
    overwrite: bool = setting(False, "replace an existing --output")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mcqtune.cli.parsing import add_settings

    add_settings(parser, ExportArgs)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mcqtune.cli.parsing import check_settings
    from mcqtune.export import describe, export_run
    from mcqtune.preflight import check_adapter_dir, check_output_dir

    check_settings(args, ExportArgs)
    check_adapter_dir(args.run)
    check_output_dir(args.output)
    if Path(args.output).exists() and any(Path(args.output).iterdir()) and not args.overwrite:
        raise FileExistsError(f"{args.output} exists and is not empty; pass --overwrite to replace it")
    result = export_run(
        args.run,
        args.output,
        dtype=args.dtype,
        check_questions=args.check_questions,
        tolerance=args.tolerance,
    )
    print(describe(result))
    return 0
