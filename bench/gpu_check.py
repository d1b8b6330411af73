"""The GPU paths, checked for real in one command (< 10 minutes on one GPU, safe to re-run):

    python bench/gpu_check.py [--steps 30] [--batch-size 8] [--bench-steps 20] [--output gpu_check.json]

1. bf16 LoRA and full fine-tuning, and QLoRA with paged 8-bit AdamW, through mcqtune's real ``train()``
   on the bundled model (MedMCQA, letter objective, no validation);
2. ``mcqtune estimate`` against the measured ``torch.cuda.max_memory_allocated`` of each of those runs
   (the estimate is sized for the longest training sequence the run sees);
3. a tokens/s training benchmark (LoRA, bf16, random tokens) on randomly initialised models of the bundled
   architecture and of the shipped ~1B Llama config (``configs/models/llama-3.2-1b.json``).

Prints a JSON summary and writes it to ``--output`` (default: ``$OUT/gpu_check.json`` when ``$OUT`` is
set). Without CUDA it says so, writes a summary with ``"status": "no_cuda"`` and exits 0. Every run works
in a fresh temporary directory, so re-running never trips over a previous one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

BUNDLED_ARCHITECTURE = "smollm2-135m-instruct"
ONE_BILLION = "llama-3.2-1b"
TRAIN_RUNS = (
    ("lora", {}),
    ("full", {}),
    ("qlora", {"optimizer": "paged_adamw_8bit"}),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per training run (default 30)")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per step (default 8)")
    parser.add_argument("--bench-steps", type=int, default=20, help="timed steps per throughput run")
    parser.add_argument("--bench-batch", type=int, default=8, help="sequences per throughput step")
    parser.add_argument("--bench-length", type=int, default=512, help="tokens per throughput sequence")
    parser.add_argument("--output", type=Path, help="summary JSON (default: $OUT/gpu_check.json if set)")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "bench_steps", "bench_batch", "bench_length"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if args.output is None and os.environ.get("OUT"):
        args.output = Path(os.environ["OUT"]) / "gpu_check.json"
    return args


def train_config(method: str, options: dict[str, Any], steps: int, batch_size: int, output: Path):
    """mcqtune's TrainConfig for a fixed-step run on MedMCQA: letter objective, no validation or saves."""
    from mcqtune.config import build_config

    flags = {
        "method": method,
        "objective": "letter",
        "train": "medmcqa",
        "output": str(output),
        "max_steps": steps,
        "batch_size": batch_size,
        "train_limit": steps * batch_size,
        "save_steps": None,
        "warmup_ratio": 0.0,
        "method_options": options,
    }
    config = build_config(flags)
    config.validation = None  # build_config drops None flags (the default validation split would remain)
    return config


def longest_sequence(config) -> int:
    """Tokens of the longest training sequence the run sees: the worst batch is padded to it."""
    from mcqtune.data import load_split
    from mcqtune.models import load_tokenizer, resolve_model
    from mcqtune.prompt import PromptEncoder

    encoder = PromptEncoder(load_tokenizer(resolve_model(config.model)), config.prompt_config())
    examples, _ = load_split(config.train, config, config.train_limit, "train")
    encoded = encoder.encode_letter(examples, with_answer=True)
    return max(len(feature.input_ids) for feature in encoded.features)


def estimate_for(config, precision: str):
    from mcqtune.estimate import estimate_memory

    return estimate_memory(
        config.model,
        config.method,
        batch_size=config.batch_size,
        max_length=longest_sequence(config),
        precision=precision,
        objective=config.objective,
        options=config.method_options,
    )


def check_training(method: str, options: dict[str, Any], steps: int, batch_size: int) -> dict[str, Any]:
    """One real train() run: peak CUDA memory against the estimate, tokens/s, loss."""
    import torch

    from mcqtune.training.recipe import train

    with tempfile.TemporaryDirectory(prefix=f"gpu-check-{method}-") as tmp:
        config = train_config(method, options, steps, batch_size, Path(tmp) / "run")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        result = train(config, show_progress=False)
        wall = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() - before
    estimate = estimate_for(config, "bf16")
    return {
        "method": method,
        "options": options,
        "steps": steps,
        "batch_size": batch_size,
        "wall_seconds": round(wall, 1),
        "tokens_per_second": result.metrics["train"]["tokens_per_second"],
        "final_loss": result.metrics["train"]["final_loss"],
        "peak_allocated_bytes": peak,
        "estimate_total_bytes": estimate.total_bytes,
        "estimate_over_measured": round(estimate.total_bytes / max(peak, 1), 3),
        "estimate": estimate.to_dict(),
    }


def benchmark_random_model(name: str, steps: int, batch: int, length: int) -> dict[str, Any]:
    """LoRA training tokens/s (bf16 autocast) on a randomly initialised model: no weights needed."""
    import torch
    from transformers import AutoModelForCausalLM

    from mcqtune.config import build_config
    from mcqtune.estimate import estimate_memory, load_model_config
    from mcqtune.methods import get_method

    config = load_model_config(name)
    method = get_method("lora")
    train = build_config({"method": "lora"})
    torch.manual_seed(0)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32).cuda()
    base.config.use_cache = False
    method.prepare_base(base, "bf16")
    model = method.apply(base, train.method_options)
    model.train()
    optimizer = method.make_optimizer(
        [p for p in model.parameters() if p.requires_grad], train, torch.device("cuda")
    )
    tokens = torch.randint(0, config.vocab_size, (batch, length), device="cuda")

    def step() -> float:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    step()  # warm-up: kernel selection, allocator growth
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - before
    # This loop computes logits at every position; mcqtune's objectives (and so the estimate) at most half.
    estimate = estimate_memory(name, "lora", batch_size=batch, max_length=length, objective="ranking")
    return {
        "model": name,
        "parameters": estimate.total_params,
        "batch": batch,
        "length": length,
        "steps": steps,
        "tokens_per_second": round(steps * batch * length / seconds, 1),
        "peak_allocated_bytes": peak,
        "estimate_total_bytes": estimate.total_bytes,
    }


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["device_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
        info["cuda"] = torch.version.cuda
    return info


def write_summary(summary: dict[str, Any], output: Path | None) -> None:
    text = json.dumps(summary, indent=2)
    print(text)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    summary: dict[str, Any] = {"environment": environment()}
    if not summary["environment"]["cuda_available"]:
        print(
            "gpu_check: no CUDA device here; nothing to check (run it on a machine with a GPU)",
            file=sys.stderr,
        )
        summary["status"] = "no_cuda"
        write_summary(summary, args.output)
        return 0
    from mcqtune.quiet import quiet_libraries

    quiet_libraries()
    start = time.perf_counter()
    summary["training"] = [
        check_training(method, options, args.steps, args.batch_size) for method, options in TRAIN_RUNS
    ]
    summary["throughput"] = [
        benchmark_random_model(name, args.bench_steps, args.bench_batch, args.bench_length)
        for name in (BUNDLED_ARCHITECTURE, ONE_BILLION)
    ]
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["status"] = "ok"
    write_summary(summary, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
