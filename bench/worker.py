"""Subprocess entry points for ``bench/run.py``: each measurement that needs its own process (peak RSS,
start-up) runs here and writes one JSON record.

    python bench/worker.py TASK SPEC.json OUT.json

Tasks: ``train`` (mcqtune's real ``train()`` for a fixed number of steps), ``naive`` (the naive HF
``Trainer`` recipe for a fixed number of steps), ``startup`` (``mcqtune eval`` with timestamps at model
load and at the end of the first scored batch), ``rss_curve`` (RSS after every step of the Trainer).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mib() -> float:
    """This process's peak RSS since start or the last :func:`_reset_peak`: VmHWM of /proc/self/status.
    Not ru_maxrss, which on Linux carries the parent's RSS over fork+exec."""
    return _status_mib("VmHWM")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class _Phases:
    """Peak RSS of the load phase (until the method's apply(), which follows load_base) and of the
    training phase after it (apply, the steps, saving the artifact)."""

    def __init__(self) -> None:
        self.load_peak: float | None = None
        self.after_load: float | None = None
        self.reset = False

    def mark_loaded(self) -> None:
        if self.load_peak is None:
            self.load_peak = _peak_rss_mib()
            self.after_load = _status_mib("VmRSS")
            self.reset = _reset_peak()

    def record(self) -> dict:
        end_peak = _peak_rss_mib()
        whole = max(end_peak, self.load_peak or 0.0)
        return {
            "peak_rss_mib": round(whole, 1),
            "peak_rss_load_mib": round(self.load_peak, 1) if self.load_peak is not None else None,
            "rss_after_load_mib": round(self.after_load, 1) if self.after_load is not None else None,
            "peak_rss_training_mib": round(end_peak, 1) if self.reset else None,
        }


def task_train(spec: dict) -> dict:
    """mcqtune ``train()`` on MedMCQA for ``steps`` steps, no validation: peak RSS, tokens/s, weight bytes."""
    from mcqtune.quiet import quiet_libraries

    quiet_libraries()
    from bench.helpers import current_rss_mib

    from mcqtune.config import build_config
    from mcqtune.methods import get_method
    from mcqtune.training.recipe import train

    rss_imports = current_rss_mib()
    method = get_method(spec["method"])
    phases = _Phases()
    original = method.apply

    def apply(model, options):
        phases.mark_loaded()
        return original(model, options)

    method.apply = apply  # instance attribute: shadows the class's apply in this process only
    flags = {
        "method": spec["method"],
        "objective": spec.get("objective", "letter"),
        "train": spec.get("train", "medmcqa"),
        "output": spec["output"],
        "max_steps": spec["steps"],
        "batch_size": spec["batch_size"],
        "train_limit": spec["steps"] * spec["batch_size"],
        "precision": spec.get("precision", "auto"),
        "save_steps": None,
        "warmup_ratio": 0.0,
        "gradient_checkpointing": bool(spec.get("gradient_checkpointing")),
    }
    if spec.get("options"):
        flags["method_options"] = spec["options"]
    config = build_config(flags)
    config.validation = None  # build_config drops None flags (the default validation split would remain)
    start = time.perf_counter()
    result = train(config, show_progress=False)
    wall = time.perf_counter() - start
    metrics = result.metrics
    return {
        "method": spec["method"],
        "precision": spec.get("precision", "auto"),
        "gradient_checkpointing": bool(spec.get("gradient_checkpointing")),
        "steps": spec["steps"],
        "batch_size": spec["batch_size"],
        **phases.record(),
        "rss_after_imports_mib": round(rss_imports, 1),
        "wall_seconds": round(wall, 2),
        "train": metrics["train"],
        "parameters": metrics["parameters"],
    }


def task_naive(spec: dict) -> dict:
    """The naive Trainer recipe for ``steps`` steps: peak RSS and (not interleaved) real tokens/s."""
    from mcqtune.quiet import quiet_libraries

    quiet_libraries()
    from bench.helpers import current_rss_mib
    from bench.naive import (
        CountingCollator,
        naive_dataset,
        naive_lora_model,
        naive_texts,
        naive_trainer,
    )
    from bench.notebook_tokenizer import notebook_tokenizer

    from mcqtune.data import bundled_path, load_examples
    from mcqtune.models import resolve_model

    rss_imports = current_rss_mib()
    resolved = resolve_model(None)
    examples = load_examples(bundled_path("medmcqa", "train"), limit=spec["steps"] * spec["batch_size"])
    tokenizer = notebook_tokenizer(resolved.path)
    dataset = naive_dataset(tokenizer, naive_texts(examples.examples))
    model = naive_lora_model(resolved.path, spec["options"])
    phases = _Phases()
    phases.mark_loaded()
    collator = CountingCollator(tokenizer)
    trainer = naive_trainer(
        model,
        tokenizer,
        dataset,
        spec["output"],
        batch_size=spec["batch_size"],
        max_steps=spec["steps"],
        lr=spec["lr"],
        warmup_ratio=0.0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=42,
        collator=collator,
    )
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    return {
        "steps": spec["steps"],
        "batch_size": spec["batch_size"],
        **phases.record(),
        "rss_after_imports_mib": round(rss_imports, 1),
        "wall_seconds": round(wall, 2),
        "real_tokens": sum(collator.real_tokens),
        "tokens_per_second": round(sum(collator.real_tokens) / wall, 1),
    }


def task_startup(spec: dict) -> dict:
    """Run ``mcqtune eval`` (spec["argv"]) and record when the model was loaded and the first batch scored."""
    marks: dict[str, float] = {"process_start": spec["t0"]}
    import mcqtune.evaluation.evaluate as evaluate
    from mcqtune.cli import main as cli
    from mcqtune.inference import Predictor

    marks["imports_done"] = time.time()
    load = Predictor.open.__func__  # the CLI loads the base (and --adapter) through Predictor.open

    def timed_load(cls, *args, **kwargs):
        marks["load_start"] = time.time()
        try:
            return load(cls, *args, **kwargs)
        finally:
            marks["load_end"] = time.time()

    Predictor.open = classmethod(timed_load)
    for name in ("letter_forward", "cloze_forward"):
        forward = getattr(evaluate, name)

        def first_batch(*args, _forward=forward, **kwargs):
            out = _forward(*args, **kwargs)
            marks.setdefault("first_batch", time.time())
            return out

        setattr(evaluate, name, first_batch)
    code = cli.main(spec["argv"])
    marks["exit"] = time.time()
    return {"exit_code": code, "marks": marks, "peak_rss_mib": round(_peak_rss_mib(), 1)}


def task_rss_curve(spec: dict) -> dict:
    """RSS after every step of mcqtune's Trainer (the one ``train()`` runs) for ``steps`` steps, the peak
    within each step, and what stays after each of the trainer's releases of freed memory."""
    from mcqtune.quiet import quiet_libraries

    quiet_libraries()
    from bench.helpers import current_rss_mib, retained_growth

    from mcqtune.config import build_config
    from mcqtune.data import bundled_path, load_examples
    from mcqtune.models import load_tokenizer, resolve_model
    from mcqtune.prompt import PromptEncoder
    from mcqtune.training.trainer import Trainer

    resolved = resolve_model(None)
    dataset = spec.get("train", "medmcqa")
    rows = load_examples(bundled_path(dataset, "train")).examples
    flags = {
        "method": spec["method"],
        "objective": spec.get("objective", "letter"),
        "max_steps": spec["steps"],
        "batch_size": spec["batch_size"],
        "precision": spec.get("precision", "auto"),
    }
    import mcqtune.training.trainer as trainer_module

    if spec.get("release_every"):  # a lever A/B: another cadence of the trainer's release of freed memory
        trainer_module.RELEASE_EVERY_STEPS = spec["release_every"]
    trainer = Trainer(build_config(flags), resolved, PromptEncoder(load_tokenizer(resolved)), rows)
    curve, step_peaks, after_release = [], [], {}
    start = time.perf_counter()
    for step in range(1, spec["steps"] + 1):
        reset = _reset_peak()
        trainer.step()
        curve.append(round(current_rss_mib(), 1))
        if reset:  # the highest RSS within the step: what the machine must hold for this batch
            step_peaks.append(round(_peak_rss_mib(), 1))
        if step % trainer_module.RELEASE_EVERY_STEPS == 0:
            after_release[step] = curve[-1]
    return {
        **flags,
        "dataset": dataset,
        "precision": trainer.precision,
        "release_every": trainer_module.RELEASE_EVERY_STEPS,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "rss_mib": curve,
        "step_peak_rss_mib": step_peaks,
        "peak_rss_mib": round(max(step_peaks, default=_peak_rss_mib()), 1),
        **retained_growth(after_release),
    }


TASKS = {"train": task_train, "naive": task_naive, "startup": task_startup, "rss_curve": task_rss_curve}


def main(argv: list[str]) -> int:
    task, spec_path, out_path = argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    spec = json.loads(Path(spec_path).read_text())
    record = TASKS[task](spec)
    Path(out_path).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
