"""Runs inside the bench venv (lm-eval installed there, never mcqtune): loads lm-eval's ``hf`` model once,
then evaluates each task with the model already in memory and records its seconds, so questions/s is
the scoring throughput of each tool, not its imports or model load (bench/lm_eval_parity.py).

    .bench-venv/bin/python bench/lm_eval_driver.py SPEC.json

SPEC: ``{"model_args": {...}, "batch_size": 8, "task_dir": DIR, "tasks": [NAME, ...], "out": DIR}``.
Writes ``OUT/<task>.samples.jsonl`` (lm-eval's logged samples) and ``OUT/<task>.json`` (seconds, acc).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(spec_path: str) -> int:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    lm = HFLM(batch_size=spec["batch_size"], device="cpu", **spec["model_args"])
    load_seconds = time.perf_counter() - started
    manager = TaskManager(include_path=spec["task_dir"])
    for task in spec["tasks"]:
        start = time.perf_counter()
        results = simple_evaluate(
            model=lm, tasks=[task], task_manager=manager, num_fewshot=0, log_samples=True
        )
        seconds = time.perf_counter() - start
        samples = results["samples"][task]
        with (out / f"{task}.samples.jsonl").open("w", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps(sample, default=str) + "\n")
        record = {"seconds": seconds, "model_load_seconds": load_seconds, "questions": len(samples)}
        (out / f"{task}.json").write_text(json.dumps(record))
        print(f"lm-eval {task}: {len(samples)} questions in {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
