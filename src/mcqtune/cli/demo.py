"""``mcqtune demo``: zero-shot against LoRA on the bundled MedMCQA and ARC-Easy, one table."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mcqtune.settings import setting

HELP = "zero-shot vs LoRA on bundled MedMCQA and ARC-Easy, one table"
DESCRIPTION = "The end-to-end demo `make demo` runs."


@dataclass
class DemoArgs:
    output: str = setting("runs/demo", "directory for the runs and the table")
    quick: bool = setting(False, "tiny budget, for a smoke test")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mcqtune.cli.parsing import add_settings

    add_settings(parser, DemoArgs)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mcqtune.demo import run_demo

    return run_demo(Path(args.output), quick=args.quick)
