"""``trl``: the notebook's TRL ``SFTTrainer`` recipe vs ``mcqtune train``, whole processes (imports and
model load included) under bench/peak.py: wall time, peak RSS, then both artifacts' accuracy.

At equal precision: TRL trains with the precision mcqtune resolves on this host (``precision: auto``:
bf16 autocast where the CPU or GPU computes bf16 natively, fp32 elsewhere), and every row says which.
Beside it, TRL left at its defaults (bf16 autocast on every host): the same run where that is the
equal precision, else a few steps extrapolated (on an AVX2 CPU TRL's default bf16 is emulated, minutes
a step). Both recipes' real-token share (real / computed tokens) and MFU (real tokens/s x 4N over the
host's matmul peak of the precision used) come with it. Real tokens are the non-pad positions a recipe
computed: mcqtune runs the prompt start its batch's rows share once (``scoring.collate_letter``) and
counts it once, so its tokens/s ratio is below its wall-time ratio and its MFU counts only work done.
"""

from __future__ import annotations

import json
import statistics
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


def run_trl(name: str, tmp: Path, steps: int, batch: int, precision: str) -> dict[str, Any]:
    """bench/trl_recipe.py measured as its own process, its trl.json merged into the record; refuses a
    run whose resolved precision is not the one asked for (``defaults``: any)."""
    from bench.trl_recipe import write_recipe_inputs

    inputs = tmp / f"{name}_inputs.json"  # made here: the TRL process must not import mcqtune
    write_recipe_inputs(inputs, "medmcqa", steps, batch)
    command = [sys.executable, str(ROOT / "bench" / "trl_recipe.py"), str(tmp / name)]
    command += ["--inputs", str(inputs), "--steps", str(steps), "--batch-size", str(batch)]
    command += ["--precision", precision]
    record = run_measured(name, command, tmp) | json.loads((tmp / name / "trl.json").read_text())
    if record["mcqtune_imported"]:
        raise RuntimeError(f"{name}: the TRL process imported mcqtune (its allocator settings)")
    if precision != "defaults" and record["precision"] != precision:
        raise RuntimeError(f"{name}: asked TRL for {precision}, it trained in {record['precision']}")
    return record


def default_row_plan(default_precision: str, equal_precision: str) -> str:
    """How to measure "TRL at its defaults": ``reuse`` the equal-precision run when TRL's default
    precision on this host is that one (it is the same run), else ``extrapolate`` from a few steps."""
    return "reuse" if default_precision == equal_precision else "extrapolate"


def extrapolated(run: dict[str, Any], full_steps: int) -> dict[str, Any]:
    """A run of a few steps scaled to ``full_steps``: the measured whole process plus the steps it did
    not run, each at the mean of its measured steps' seconds."""
    per_step = statistics.mean(run["step_seconds"])
    return {
        "measured_steps": run["steps"],
        "seconds_per_step": round(per_step, 2),
        "extrapolated_wall_seconds": round(run["wall_seconds"] + (full_steps - run["steps"]) * per_step, 1),
    }


def throughput(
    real_tokens: int,
    computed_tokens: int | None,
    train_seconds: float,
    flops_per_token: int,
    peak_gflops: float | None,
) -> dict[str, Any]:
    """One recipe's real tokens/s, real-token share and MFU (None without a peak to divide by)."""
    from bench.helpers import mfu, real_token_share

    rate = real_tokens / max(train_seconds, 1e-9)
    share = real_token_share(real_tokens, computed_tokens)
    return {
        "real_tokens": real_tokens,
        "computed_tokens": computed_tokens,
        "real_token_share": None if share is None else round(share, 4),
        "real_tokens_per_second": round(rate, 1),
        "mfu": None if peak_gflops is None else round(mfu(rate, flops_per_token, peak_gflops), 4),
    }


def _peak(ctx: Context, on_cpu: bool) -> tuple[dict[str, float] | None, str]:
    """The host's matmul peak (GFLOP/s by precision) and where it came from."""
    if not on_cpu:
        return None, "none: the peak section measures the CPU, this run trained on a GPU"
    if ctx.peak_gflops is not None:
        return ctx.peak_gflops, "the peak section of this run"
    from bench.sections.peak import section_peak

    log("trl: matmul peak of this host (the peak section did not run)")
    section_peak(ctx)
    return ctx.peak_gflops, "measured by this section (the peak section did not run)"


def _defaults_row(
    plan: str, default_precision: str, trl: dict[str, Any], ours: dict[str, Any], tmp: Path, ctx: Context
) -> dict[str, Any]:
    """TRL left at its defaults: the equal-precision run itself, or ``trl_default_steps`` steps of it
    with the wall time extrapolated to ``trl_steps``."""
    s = ctx.settings
    if plan == "reuse":
        return {
            "precision": default_precision,
            "reused": "the equal-precision run: TRL's default precision on this host is the same",
            "wall_seconds": trl["wall_seconds"],
            "wall_ratio": round(trl["wall_seconds"] / ours["wall_seconds"], 2),
        }
    log(
        f"trl: TRL at its defaults ({default_precision}), {s.trl_default_steps} step(s) only, own process "
        f"(extrapolated to {s.trl_steps})"
    )
    run = run_trl("trl_defaults", tmp, s.trl_default_steps, s.trl_batch_size, "defaults")
    if run["precision"] != default_precision:
        raise RuntimeError(
            f"TRL's defaults trained in {run['precision']}, not the {default_precision} it reported"
        )
    scaled = extrapolated(run, s.trl_steps)
    return {
        "precision": run["precision"],
        "run": run,
        **scaled,
        "wall_ratio": round(scaled["extrapolated_wall_seconds"] / ours["wall_seconds"], 2),
    }


def section_trl(ctx: Context) -> dict[str, Any]:
    """Issue 12's honest baseline at equal precision (issue 29): the notebook's TRL SFTTrainer recipe vs
    ``mcqtune train``, whole processes (imports and model load included), the same LoRA steps on the
    same MedMCQA rows in the same precision; TRL at its defaults beside it; then both artifacts
    letter-scored on the same validation rows by the same scorer."""
    import torch
    from bench.helpers import non_embedding_params, train_flops_per_token
    from bench.trl_recipe import trl_default_precision
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    from mcqtune.evaluation.evaluate import score_examples
    from mcqtune.evaluation.metrics import compute_metrics
    from mcqtune.models import resolve_precision

    s = ctx.settings
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # mcqtune's choice on this host unless the run names one: both recipes use it
    precision = s.trl_precision or resolve_precision("auto", device)
    default_precision = trl_default_precision(use_cpu=device.type == "cpu")
    plan = default_row_plan(default_precision, precision)
    steps, batch = str(s.trl_steps), str(s.trl_batch_size)
    val_rows = ctx.rows("medmcqa", "validation", s.trl_val_rows)
    with tempfile.TemporaryDirectory(prefix="mcqtune-bench-trl-") as tmp_name:
        tmp = Path(tmp_name)
        log(f"trl: TRL SFTTrainer recipe, {steps} LoRA steps at batch {batch}, {precision}, own process")
        trl = run_trl("trl", tmp, s.trl_steps, s.trl_batch_size, precision)
        log(f"trl: mcqtune train, the same work, own process (TRL took {trl['wall_seconds']:.0f} s)")
        # The notebook's recipe keeps the data's option order: so does mcqtune here (same inputs).
        train = [sys.executable, "-m", "mcqtune", "train", "--method", "lora", "--objective", "letter"]
        train += ["--train", "medmcqa", "--no-validation", "--max-steps", steps, "--batch-size", batch]
        train += ["--no-shuffle-options", "--precision", precision]
        ours = run_measured("mcqtune", [*train, "--output", str(tmp / "mcqtune")], tmp)
        ours |= {"train": json.loads((tmp / "mcqtune" / "metrics.json").read_text())["train"]}
        # TRL's SFTConfig turns gradient checkpointing on by default: mcqtune with the same memory strategy.
        log("trl: mcqtune train --gradient-checkpointing, the same work, own process")
        checkpointed = run_measured(
            "mcqtune_checkpointed",
            [*train, "--gradient-checkpointing", "--output", str(tmp / "mcqtune_checkpointed")],
            tmp,
        )
        defaults = _defaults_row(plan, default_precision, trl, ours, tmp, ctx)
        accuracy = {}
        for name in ("trl", "mcqtune", "mcqtune_checkpointed"):
            adapter = tmp / name / "adapter"
            log(f"trl: letter-scored validation accuracy of the {name} artifact on {len(val_rows)} rows")
            base = AutoModelForCausalLM.from_pretrained(ctx.resolved.path, dtype=torch.float32)
            model = PeftModel.from_pretrained(base, str(adapter))
            scored = score_examples(model, ctx.encoder, val_rows, "letter", precision=precision)
            m = compute_metrics(scored)
            accuracy[name] = {k: m[k] for k in ("accuracy", "ci95", "n", "majority_baseline")} | {
                "predicted_letter_distribution": m["predicted_letter_distribution"]
            }
            del model, base
    n_params = non_embedding_params(AutoConfig.from_pretrained(ctx.resolved.path))
    flops = train_flops_per_token(n_params, trains_base=False)  # LoRA: frozen base, the same for both
    peak, peak_source = _peak(ctx, device.type == "cpu")
    peak_of_precision = peak[precision] if peak else None
    work = ours["train"]
    return {
        "steps": s.trl_steps,
        "batch_size": s.trl_batch_size,
        "precision": precision,
        "device": device.type,
        "trl": trl,
        "mcqtune": ours,
        "mcqtune_checkpointed": checkpointed,
        "trl_defaults": defaults,
        "wall_ratio": round(trl["wall_seconds"] / ours["wall_seconds"], 2),
        "peak_rss_ratio": round(ours["peak_rss_mib"] / trl["peak_rss_mib"], 2),
        "checkpointed_wall_ratio": round(trl["wall_seconds"] / checkpointed["wall_seconds"], 2),
        "checkpointed_peak_rss_ratio": round(checkpointed["peak_rss_mib"] / trl["peak_rss_mib"], 2),
        "non_embedding_params": n_params,
        "flops_per_real_token": flops,
        "peak_gflops": peak,
        "peak_source": peak_source,
        "throughput": {
            "trl": throughput(
                trl["real_tokens"], trl["computed_tokens"], trl["train_seconds"], flops, peak_of_precision
            ),
            "mcqtune": throughput(
                work["real_tokens"], work["computed_tokens"], work["seconds"], flops, peak_of_precision
            ),
        },
        "accuracy": accuracy,
        "accuracy_difference_points": round(
            (accuracy["mcqtune"]["accuracy"] - accuracy["trl"]["accuracy"]) * 100, 2
        ),
    }
