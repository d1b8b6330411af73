"""QLoRA against LoRA on this CPU: seconds per training step of each, interleaved, same rows, same precision.

    .venv/bin/python bench/qlora_cpu.py [--steps 3] [--batch-size 4] [--precision auto] [--out FILE]

Why: bitsandbytes (0.50) registers its native CPU 4-bit kernels only where torch reports AVX-512
(``bitsandbytes/backends/cpu/ops.py``); elsewhere every 4-bit matmul dequantizes the weight with plain
torch ops, in the forward and again in the backward. This measures what that costs against LoRA on the
same base in full precision, the factor QLoRA's CPU warning and docs/METHODS.md quote. Steps alternate
(LoRA, QLoRA, LoRA, ...) so a load change on the machine hits both; the first step of each is warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each method (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument(
        "--compute-dtype",
        default="auto",
        help="QLoRA's compute_dtype (auto: the run's precision; bf16 was the old default)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the record as JSON here")
    args = parser.parse_args(argv)

    import torch

    from mcqtune.config import build_config
    from mcqtune.data import bundled_path, load_examples
    from mcqtune.models import load_tokenizer, resolve_model, resolve_precision
    from mcqtune.prompt import PromptEncoder
    from mcqtune.training.trainer import Trainer

    resolved = resolve_model(None)
    encoder = PromptEncoder(load_tokenizer(resolved))
    rows = load_examples(bundled_path("medmcqa", "train"), limit=(args.steps + 1) * args.batch_size).examples
    trainers = {}
    for method in ("lora", "qlora"):
        config = build_config(
            {
                "method": method,
                "objective": "letter",
                "precision": args.precision,
                "batch_size": args.batch_size,
                "max_steps": args.steps + 1,
                "shuffle_options": False,
                "method_options": {"compute_dtype": args.compute_dtype} if method == "qlora" else {},
            }
        )
        torch.manual_seed(0)
        trainers[method] = Trainer(config, resolved, encoder, rows)
    seconds: dict[str, list[float]] = {m: [] for m in trainers}
    tokens: dict[str, int] = {m: 0 for m in trainers}
    for step in range(args.steps + 1):
        for method, trainer in trainers.items():
            result = trainer.step()
            print(f"step {step} {method}: {result.seconds:.2f} s", flush=True)
            if step:  # the first step of each is warm-up
                seconds[method].append(result.seconds)
                tokens[method] += result.real_tokens
    mean = {m: statistics.mean(s) for m, s in seconds.items()}
    record = {
        "precision": resolve_precision(args.precision, torch.device("cpu")),
        "qlora_compute_dtype": trainers["qlora"].config.method_options["compute_dtype"],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "seconds_per_step": {m: round(v, 2) for m, v in mean.items()},
        "real_tokens_per_second": {m: round(tokens[m] / sum(seconds[m]), 1) for m in seconds},
        "qlora_over_lora": round(mean["qlora"] / mean["lora"], 1),
    }
    print(json.dumps(record))
    if args.out is not None:
        args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
