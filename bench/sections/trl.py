"""``trl``: the notebook's TRL ``SFTTrainer`` recipe vs ``mcqtune train``, whole processes (imports and
model load included) under bench/peak.py: wall time, peak RSS, then both artifacts' accuracy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.context import ROOT, Context
from bench.spawn import log


def run_measured(name: str, command: list[str], tmp: Path) -> dict[str, Any]:
    """``command`` as its own process under bench/peak.py: exit code, wall seconds, peak RSS."""
    out, logfile = tmp / f"{name}.json", tmp / f"{name}.log"
    subprocess.call([sys.executable, str(ROOT / "bench" / "peak.py"), str(out), str(logfile), "--", *command])
    record = json.loads(out.read_text()) if out.exists() else {"exit_code": None}
    if record["exit_code"] != 0:
        tail = logfile.read_text(errors="replace").strip().splitlines()[-8:]
        raise RuntimeError(f"{name} failed (exit {record['exit_code']}): " + " | ".join(tail))
    return record


def section_trl(ctx: Context) -> dict[str, Any]:
    """Issue 12's honest baseline: the notebook's TRL SFTTrainer recipe vs ``mcqtune train``, whole
    processes (imports and model load included), the same LoRA steps on the same MedMCQA rows; then
    both artifacts letter-scored on the same validation rows by the same scorer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mcqtune.evaluation.evaluate import score_examples
    from mcqtune.evaluation.metrics import compute_metrics

    s = ctx.settings
    steps, batch = str(s.trl_steps), str(s.trl_batch_size)
    val_rows = ctx.rows("medmcqa", "validation", s.trl_val_rows)
    with tempfile.TemporaryDirectory(prefix="mcqtune-bench-trl-") as tmp_name:
        tmp = Path(tmp_name)
        log(f"trl: TRL SFTTrainer recipe, {steps} LoRA steps at batch {batch}, own process")
        trl = run_measured(
            "trl",
            [
                sys.executable,
                str(ROOT / "bench" / "trl_recipe.py"),
                str(tmp / "trl"),
                "--steps",
                steps,
                "--batch-size",
                batch,
            ],
            tmp,
        )
        trl |= json.loads((tmp / "trl" / "trl.json").read_text())
        log(f"trl: mcqtune train, the same work, own process (TRL took {trl['wall_seconds']:.0f} s)")
        # The notebook's recipe keeps the data's option order: so does mcqtune here (same inputs).
        train = [sys.executable, "-m", "mcqtune", "train", "--method", "lora", "--objective", "letter"]
        train += ["--train", "medmcqa", "--no-validation", "--max-steps", steps, "--batch-size", batch]
        train += ["--no-shuffle-options"]
        ours = run_measured("mcqtune", [*train, "--output", str(tmp / "mcqtune")], tmp)
        # TRL's SFTConfig turns gradient checkpointing on by default: mcqtune with the same memory strategy.
        log("trl: mcqtune train --gradient-checkpointing, the same work, own process")
        checkpointed = run_measured(
            "mcqtune_checkpointed",
            [*train, "--gradient-checkpointing", "--output", str(tmp / "mcqtune_checkpointed")],
            tmp,
        )
        accuracy = {}
        for name in ("trl", "mcqtune", "mcqtune_checkpointed"):
            adapter = tmp / name / "adapter"
            log(f"trl: letter-scored validation accuracy of the {name} artifact on {len(val_rows)} rows")
            base = AutoModelForCausalLM.from_pretrained(ctx.resolved.path, dtype=torch.float32)
            model = PeftModel.from_pretrained(base, str(adapter))
            scored = score_examples(model, ctx.encoder, val_rows, "letter", precision="bf16")
            m = compute_metrics(scored)
            accuracy[name] = {k: m[k] for k in ("accuracy", "ci95", "n", "majority_baseline")} | {
                "predicted_letter_distribution": m["predicted_letter_distribution"]
            }
            del model, base
    return {
        "steps": s.trl_steps,
        "batch_size": s.trl_batch_size,
        "trl": trl,
        "mcqtune": ours,
        "mcqtune_checkpointed": checkpointed,
        "wall_ratio": round(trl["wall_seconds"] / ours["wall_seconds"], 2),
        "peak_rss_ratio": round(ours["peak_rss_mib"] / trl["peak_rss_mib"], 2),
        "checkpointed_wall_ratio": round(trl["wall_seconds"] / checkpointed["wall_seconds"], 2),
        "checkpointed_peak_rss_ratio": round(checkpointed["peak_rss_mib"] / trl["peak_rss_mib"], 2),
        "accuracy": accuracy,
        "accuracy_difference_points": round(
            (accuracy["mcqtune"]["accuracy"] - accuracy["trl"]["accuracy"]) * 100, 2
        ),
    }
