"""`mcqtune estimate` against measured memory: the real bundled model trains 3 steps (batch 4, MedMCQA,
letter objective, no validation) in a fresh process for LoRA, QLoRA and full fine-tuning, and the
process's peak RSS growth must be within 25% of the estimate's total.

Baseline: the RSS of the same process after it imported the whole training stack (torch,
transformers, peft, accelerate, bitsandbytes, mcqtune) and before it read data or weights. Library
code is not what the estimate models; everything after it (weights, tokenizer, data, optimizer state,
activations, allocator slack) is. glibc's malloc is told to return freed blocks at once
(``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``): by default it raises its mmap threshold after the
first large free, so later tensors come from the heap and their freed memory stays in RSS, which then
measures the allocator's history rather than the memory training needs (the same runs with the default
allocator are in docs/SCALING.md too). The estimate is sized for the longest sequence of the rows the run
trains on (the worst batch is padded to it). The numbers are recorded in docs/SCALING.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.gpu_check import estimate_for, train_config  # noqa: E402

STEPS = 3
BATCH = 4
TOLERANCE = 0.25
# Tensors of 64 KiB and more get their own mapping, unmapped when freed; the heap top is trimmed at once.
RETURN_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
MEASURE = """
import json, sys
from pathlib import Path
from bench.worker import _status_mib
from mcqtune.quiet import quiet_libraries
quiet_libraries()
from mcqtune.training.recipe import train
from bench.gpu_check import train_config
baseline = _status_mib("VmRSS")
method, output, steps, batch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
train(train_config(method, {}, steps, batch, output), show_progress=False)
print(json.dumps({"baseline_mib": baseline, "peak_mib": _status_mib("VmHWM")}))
"""


def measure_peak_growth(method: str, output: Path) -> float:
    """Peak RSS minus the post-import baseline, in bytes, of a fresh process training ``method``."""
    env = {**os.environ, **RETURN_FREED_MEMORY, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, method, str(output), str(STEPS), str(BATCH)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    return (record["peak_mib"] - record["baseline_mib"]) * 2**20


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_estimate_is_within_25_percent_of_measured_peak_memory(method, tmp_path):
    import torch

    from mcqtune.models import resolve_precision

    config = train_config(method, {}, STEPS, BATCH, tmp_path / "run")
    estimate = estimate_for(config, resolve_precision("auto", torch.device("cpu")))
    measured = measure_peak_growth(method, tmp_path / "run")
    ratio = estimate.total_bytes / measured
    print(f"{method}: estimate {estimate.total_bytes / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB")
    assert abs(ratio - 1) <= TOLERANCE, f"{method}: estimate/measured = {ratio:.2f}"
