"""The honest baseline: the seed notebook's recipe as users run it, TRL's ``SFTTrainer`` + peft LoRA.

    .venv/bin/python bench/trl_recipe.py OUT_DIR [--steps 60] [--batch-size 8]

What the notebook does, on this machine: the letter-recipe text (the seed prompt + the answer letter,
see ``bench/naive.py: naive_texts``) as a ``text`` dataset; ``SFTTrainer`` with its defaults otherwise:
per-batch padding, the loss on the whole text, no packing; fp32 on CPU (``bf16=False``: the notebook
sets no precision and TRL would turn bf16 autocast on where the CPU supports it), bf16 on a GPU; LoRA
with mcqtune's own rank/alpha/dropout/targets and learning rate, so both recipes learn the same thing.

Run as its own process by ``bench/run.py`` (section ``trl``) under ``bench/peak.py``, which measures the
whole process (imports and model load included) as a user's ``python notebook.py`` would be.
Writes ``OUT_DIR/adapter`` (peft format) and ``OUT_DIR/trl.json`` (steps, train seconds, loss).
TRL is a benchmark extra (``pip install -e .[bench]``), never a runtime dependency of mcqtune.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network here: never wait on hub timeouts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data", default="medmcqa", help="bundled data set whose train split is used")
    args = parser.parse_args(argv)

    import torch
    from bench.naive import naive_texts, naive_tokenizer
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from mcqtune.config import build_config
    from mcqtune.data import bundled_path, load_examples
    from mcqtune.models import resolve_model

    config = build_config({"method": "lora", "objective": "letter"})  # mcqtune's LoRA defaults
    options = config.method_options
    rows = load_examples(bundled_path(args.data, "train"), limit=args.steps * args.batch_size).examples
    resolved = resolve_model(None)
    tokenizer = naive_tokenizer(resolved.path)
    gpu = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32)
    trainer = SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"text": naive_texts(rows)}),
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
            learning_rate=config.lr,
            lr_scheduler_type=config.scheduler,
            warmup_ratio=config.warmup_ratio,
            weight_decay=config.weight_decay or 0.0,
            max_grad_norm=config.max_grad_norm,
            seed=config.seed,
            bf16=gpu,
            fp16=False,
            use_cpu=not gpu,
            save_strategy="no",
            logging_steps=max(1, args.steps // 6),
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
        ),
    )
    start = time.perf_counter()
    result = trainer.train()
    train_seconds = time.perf_counter() - start
    trainer.model.save_pretrained(str(args.out / "adapter"))
    record = {
        "steps": result.global_step,
        "batch_size": args.batch_size,
        "train_seconds": round(train_seconds, 2),
        "train_loss": round(float(result.training_loss), 5),
        "precision": "bf16" if gpu else "fp32",
    }
    (args.out / "trl.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
