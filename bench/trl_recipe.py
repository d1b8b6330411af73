"""The honest baseline: the seed notebook's recipe as users run it, TRL's ``SFTTrainer`` + peft LoRA.

    .venv/bin/python bench/trl_recipe.py OUT_DIR --precision {bf16,fp32,defaults} [--steps 60]
        [--batch-size 8]

What the notebook does, on this machine: the letter-recipe text (the seed prompt + the answer letter,
see ``bench/naive.py: naive_texts``) as a ``text`` dataset; ``SFTTrainer`` with its defaults otherwise:
per-batch padding, the loss on the whole text, no packing, gradient checkpointing on; LoRA with
mcqtune's own rank/alpha/dropout/targets and learning rate, so both recipes learn the same thing.

``--precision`` is the one thing the benchmark sets: ``bf16`` is ``SFTConfig(bf16=True)`` (autocast, on a
CPU too), ``fp32`` is ``bf16=False``, ``defaults`` passes neither ``bf16`` nor ``fp16``, as the notebook
does: TRL then turns bf16 autocast on on every host, also on a CPU without native bf16, where it is
emulated and about 100x slower. The equal-precision comparison (``bench/sections/trl.py``) passes the
precision mcqtune resolves on the host; ``trl.json`` records what TRL actually ran with.

Run as its own process by ``bench/run.py`` (section ``trl``) under ``bench/peak.py``, which measures the
whole process (imports and model load included) as a user's ``python notebook.py`` would be. That
process never imports mcqtune: ``import mcqtune`` sets glibc's heap threshold (mcqtune/training/memory.py),
and a notebook runs with glibc's defaults. What it takes from mcqtune (the training texts, the LoRA
hyperparameters, the model's path) comes from ``--inputs``, a JSON file :func:`write_recipe_inputs` made
in another process (the benchmark's own, or a helper process this script starts when not given one);
``trl.json`` records that mcqtune was not imported.
Writes ``OUT_DIR/adapter`` (peft format) and ``OUT_DIR/trl.json`` (steps, train seconds and each step's
seconds, loss, precision, real (``attention_mask == 1``) and computed (padded) tokens).
TRL is a benchmark extra (``pip install -e .[bench]``), never a runtime dependency of mcqtune.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network here: never wait on hub timeouts

PRECISIONS = ("bf16", "fp32", "defaults")


def sft_precision_kwargs(precision: str) -> dict[str, bool]:
    """``SFTConfig`` keyword arguments for ``--precision``; ``defaults`` leaves the choice to TRL."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "defaults":
        return {}
    return {"bf16": precision == "bf16", "fp16": False}


def resolved_precision(training_args: Any) -> str:
    """The precision a (TRL / transformers) ``TrainingArguments`` trains with, after its own defaults."""
    return "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32"


def trl_default_precision(use_cpu: bool) -> str:
    """What TRL picks on this host when the precision is left to it, asked of TRL itself (no training)."""
    from trl import SFTConfig

    with tempfile.TemporaryDirectory(prefix="mcqtune-bench-trl-config-") as tmp:
        return resolved_precision(SFTConfig(output_dir=tmp, use_cpu=use_cpu, report_to=[]))


def write_recipe_inputs(path: Path, data: str, steps: int, batch_size: int) -> None:
    """What the TRL process takes from mcqtune, as JSON: the letter-recipe texts of the first
    ``steps x batch_size`` training rows, mcqtune's LoRA defaults and the bundled model's path."""
    from bench.naive import naive_texts

    from mcqtune.config import build_config
    from mcqtune.data import bundled_path, load_examples
    from mcqtune.models import resolve_model

    config = build_config({"method": "lora", "objective": "letter"})  # mcqtune's LoRA defaults
    rows = load_examples(bundled_path(data, "train"), limit=steps * batch_size).examples
    inputs = {
        "texts": naive_texts(rows),
        "model_path": str(resolve_model(None).path),
        "lora": {k: config.method_options[k] for k in ("r", "alpha", "dropout", "target_modules")},
        "training": {
            "learning_rate": config.lr,
            "lr_scheduler_type": config.scheduler,
            "warmup_ratio": config.warmup_ratio,
            "weight_decay": config.weight_decay or 0.0,
            "max_grad_norm": config.max_grad_norm,
            "seed": config.seed,
        },
    }
    path.write_text(json.dumps(inputs))


def _inputs_from_helper_process(out: Path, data: str, steps: int, batch_size: int) -> Path:
    """The inputs, made by a separate process (so this one never imports mcqtune)."""
    path = out / "recipe_inputs.json"
    script = "import sys; from bench.trl_recipe import write_recipe_inputs as w; from pathlib import Path; "
    script += "w(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))"
    paths = [str(ROOT), str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    command = [sys.executable, "-c", script, str(path), data, str(steps), str(batch_size)]
    subprocess.run(command, check=True, env=env)
    return path


class TokenCounter:
    """Wraps ``SFTTrainer``'s data collator: each batch's real (``attention_mask == 1``) and computed
    (``input_ids.numel()``: padding included) tokens, in the order the batches were made."""

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]]):
        self.collate = collate
        self.batches: list[tuple[int, int]] = []

    def __call__(self, features: list[Any]) -> dict[str, Any]:
        batch = self.collate(features)
        computed = batch["input_ids"].numel()
        mask = batch.get("attention_mask")  # absent when padding-free: every position is real
        self.batches.append((int(mask.sum()) if mask is not None else computed, computed))
        return batch

    def totals(self, batches: int) -> tuple[int, int]:
        """(real, computed) tokens of the first ``batches`` batches: those trained on (a data loader may
        make one more than it hands out)."""
        used = self.batches[:batches]
        return sum(r for r, _ in used), sum(c for _, c in used)


def step_clock() -> Any:
    """A ``TrainerCallback`` that records each optimizer step's seconds (``.seconds``)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.start = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.seconds.append(time.perf_counter() - self.start)

    return StepClock()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--data", default="medmcqa", help="bundled data set whose train split is used (without --inputs)"
    )
    parser.add_argument(
        "--inputs", type=Path, help="write_recipe_inputs' JSON (default: made by a helper process)"
    )
    parser.add_argument(
        "--precision",
        required=True,
        choices=PRECISIONS,
        help="bf16: SFTConfig(bf16=True), autocast on a CPU too; fp32: bf16=False; defaults: TRL's own",
    )
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    inputs_path = args.inputs or _inputs_from_helper_process(args.out, args.data, args.steps, args.batch_size)
    inputs = json.loads(inputs_path.read_text())
    options, hyper = inputs["lora"], inputs["training"]
    if len(inputs["texts"]) < args.steps * args.batch_size:
        needed = args.steps * args.batch_size
        raise SystemExit(f"{inputs_path}: {len(inputs['texts'])} texts, {needed} needed")

    import torch
    from bench.notebook_tokenizer import notebook_tokenizer
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    tokenizer = notebook_tokenizer(inputs["model_path"])
    gpu = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(inputs["model_path"], dtype=torch.float32)
    trainer = SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"text": inputs["texts"][: args.steps * args.batch_size]}),
        peft_config=LoraConfig(
            r=int(options["r"]),
            lora_alpha=float(options["alpha"]),
            lora_dropout=float(options["dropout"]),
            target_modules=options["target_modules"],
            bias="none",
            task_type="CAUSAL_LM",
        ),
        args=SFTConfig(
            output_dir=str(args.out / "trainer"),
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps,
            **hyper,
            **sft_precision_kwargs(args.precision),
            use_cpu=not gpu,
            save_strategy="no",
            logging_steps=max(1, args.steps // 6),
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
        ),
    )
    counter = TokenCounter(trainer.data_collator)
    trainer.data_collator = counter  # the train data loader is built from it inside train()
    clock = step_clock()
    trainer.add_callback(clock)
    start = time.perf_counter()
    result = trainer.train()
    train_seconds = time.perf_counter() - start
    trainer.model.save_pretrained(str(args.out / "adapter"))
    real, computed = counter.totals(result.global_step * trainer.args.gradient_accumulation_steps)
    record = {
        "steps": result.global_step,
        "batch_size": args.batch_size,
        "train_seconds": round(train_seconds, 2),
        "step_seconds": [round(s, 3) for s in clock.seconds],
        "train_loss": round(float(result.training_loss), 5),
        "precision_asked": args.precision,
        "precision": resolved_precision(trainer.args),  # what TRL resolved and trained with
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "real_tokens": real,  # their share and rate: bench/sections/trl.py (one formula for both recipes)
        "computed_tokens": computed,
        # a notebook's allocator: glibc's defaults, which `import mcqtune` would have changed
        "mcqtune_imported": any(name == "mcqtune" or name.startswith("mcqtune.") for name in sys.modules),
    }
    (args.out / "trl.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
