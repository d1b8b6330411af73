"""lm-evaluation-harness through ``mcqtune serve``'s OpenAI endpoint vs lm-eval's own ``hf`` model with
``peft=``, on the real bundled model and one LoRA artifact (docs/SERVING.md, "OpenAI API").

    .venv/bin/python bench/openai_parity.py --n 50                  # trains a short LoRA run first
    .venv/bin/python bench/openai_parity.py --run runs/lora-arc --n 50

Serves the artifact on a loopback port (fp32, as lm-eval's ``hf`` model computes), runs lm-eval's
``local-completions`` model against it and lm-eval's ``hf`` model on the same adapter directory, both on
the first N bundled ARC-Easy validation rows as a local multiple-choice task, and prints the accuracies,
how many questions the two answer differently, the largest log-likelihood difference and the seconds.
Needs the ``test`` extra (lm-eval, the OpenAI SDK); nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from mcqtune.data import bundled_path, load_examples
from mcqtune.models import resolve_model
from mcqtune.serving.app import create_app
from mcqtune.serving.engine import open_engine
from mcqtune.serving.loadgen import lm_eval_scores, local_completions_args, running_server, write_lm_eval_task
from mcqtune.serving.registry import ArtifactRegistry

NAME = "lora"  # the artifact's name on the server (the request's "model")


def _short_run(root: Path) -> Path:
    """A LoRA run on the bundled model (40 steps on ARC-Easy), reused by later calls."""
    from mcqtune.cli.main import main

    out = root / "openai-parity-lora"
    if not (out / "metrics.json").is_file():
        argv = ["train", "--method", "lora", "--train", "arc_easy", "--validation", "arc_easy"]
        argv += ["--output", str(out), "--max-steps", "40", "--eval-limit", "50", "--final-eval-limit", "100"]
        argv += ["--overwrite", "--quiet"]
        if main(argv) != 0:
            raise SystemExit("training the LoRA run failed")
    return out


def _choices_argmax(loglikelihoods: list[float], sizes: list[int]) -> list[int]:
    picks, start = [], 0
    for size in sizes:
        picks.append(int(np.argmax(loglikelihoods[start : start + size])))
        start += size
    return picks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a LoRA run directory (default: train a short one)")
    parser.add_argument("--n", type=int, default=50, help="ARC-Easy validation questions")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    root = Path(tempfile.gettempdir()) / "mcqtune-bench"
    run = args.run or _short_run(root)
    examples = load_examples(bundled_path("arc_easy", "validation")).examples[: args.n]
    task_dir = write_lm_eval_task(root / "openai-parity-task", examples)
    model_dir = resolve_model(None).path

    registry = ArtifactRegistry(open_engine(None, "fp32", 16), {NAME: run})
    registry.load_named()
    with running_server(create_app(registry)) as url:
        start = time.perf_counter()
        served, served_ll = lm_eval_scores(
            task_dir, "local-completions", local_completions_args(url, NAME, model_dir, args.batch_size)
        )
        served_seconds = time.perf_counter() - start
    start = time.perf_counter()
    hf_args = {"pretrained": model_dir, "peft": str(run / "adapter"), "dtype": "float32"}
    hf_args |= {"add_bos_token": True, "device": "cpu", "batch_size": args.batch_size}
    direct, direct_ll = lm_eval_scores(task_dir, "hf", hf_args)
    direct_seconds = time.perf_counter() - start

    sizes = [len(e.choices) for e in examples]
    picks = zip(_choices_argmax(served_ll, sizes), _choices_argmax(direct_ll, sizes), strict=True)
    differ = sum(a != b for a, b in picks)
    largest = max(abs(a - b) for a, b in zip(served_ll, direct_ll, strict=True))
    print(f"run {run}, {args.n} ARC-Easy validation questions, fp32")
    print("| lm-eval model | accuracy | seconds |")
    print("|---|---|---|")
    print(f"| local-completions -> mcqtune serve ({NAME}) | {served * 100:.1f}% | {served_seconds:.0f} |")
    print(f"| hf + peft (same adapter) | {direct * 100:.1f}% | {direct_seconds:.0f} |")
    print(f"questions answered differently: {differ} of {args.n}; largest log-likelihood gap {largest:.2e}")
    return 0 if differ <= 2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
