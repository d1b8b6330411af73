"""``mcqtune estimate``: per-device training memory of a method on a model, from its config.json alone."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mcqtune.config import OBJECTIVES, TrainConfig
from mcqtune.prompt import PromptConfig
from mcqtune.settings import setting

HELP = "per-device training memory of a method on a model, from its config.json alone"
DESCRIPTION = (
    "Split one training process's memory into frozen weights, trainable parameters, gradients, optimizer "
    "state, activations and overhead, without loading weights (docs/SCALING.md). --model: a shipped name "
    "(llama-3.2-1b, llama-3.1-8b, llama-3.1-70b, qwen2.5-1.5b, qwen2.5-7b), a config.json, a directory "
    "holding one, or any train --model."
)
_TRAIN = TrainConfig()


def _weight_precisions() -> tuple[str, ...]:
    from mcqtune.estimate import PRECISIONS

    return tuple(PRECISIONS)


def _shardings() -> tuple[str, ...]:
    from mcqtune.estimate import SHARDINGS

    return SHARDINGS


@dataclass
class EstimateArgs:
    model: str | None = setting(None, "model", none_means="the bundled SmolLM2-135M")
    method: str = setting(_TRAIN.method, "any registered method")
    batch_size: int = setting(_TRAIN.batch_size, "questions per micro-batch", check="positive")
    max_length: int = setting(PromptConfig().max_length, "tokens per sequence", check="positive")
    precision: str = setting("bf16", "weights dtype", choices=_weight_precisions)
    objective: str = setting(
        _TRAIN.objective,
        "decides how many positions reach the LM head (auto: as train decides)",
        choices=OBJECTIVES,
    )
    num_processes: int = setting(1, "data-parallel processes", check="positive")
    sharding: str = setting(
        "none",
        "none: DDP (a full copy per process); zero2: optimizer state and gradients split; zero3/fsdp: "
        "the weights too",
        choices=_shardings,
    )
    option: list[str] | None = setting(None, "method option, e.g. r=8", repeat=True, metavar="KEY=VALUE")
    json: bool = setting(False, "the same figures in bytes, as JSON")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mcqtune.cli.parsing import add_settings

    add_settings(parser, EstimateArgs)
    add_settings(parser, TrainConfig, ("gradient_checkpointing",), layered=True)  # train's flag and help


def run(args: argparse.Namespace) -> int:
    import json

    from mcqtune.cli.common import parse_option_pairs
    from mcqtune.cli.parsing import check_settings
    from mcqtune.estimate import estimate_memory

    check_settings(args, EstimateArgs)
    settings = {
        name: getattr(args, name)
        for name in ("batch_size", "max_length", "precision", "objective", "num_processes", "sharding")
    }
    settings["gradient_checkpointing"] = bool(args.gradient_checkpointing)  # None: not given
    estimate = estimate_memory(args.model, args.method, options=parse_option_pairs(args.option), **settings)
    print(json.dumps(estimate.to_dict(), indent=2) if args.json else estimate.format_text())
    return 0
