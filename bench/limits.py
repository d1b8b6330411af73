"""Time and memory limits that used to be test assertions, measured and reported as ratios to their limit.

    .venv/bin/python bench/run.py --only limits      # in the benchmark's table and JSON
    .venv/bin/python bench/limits.py [--quick]       # alone: prints the JSON

On a loaded machine a wall-clock or RSS bound fails for reasons that are not mcqtune's, so the tests
keep only what holds whatever the load (tests/test_training_memory.py, test_compare_backends.py), and
the numbers live here, each as ``value / limit`` (<= 1: within the limit):

- ``estimate``: ``mcqtune estimate``'s total over the measured peak RSS growth of a fresh process that
  trains the bundled model 3 steps (batch 4, MedMCQA, letter) for LoRA, QLoRA and full fine-tuning;
  glibc returns freed blocks at once (``RETURN_FREED_MEMORY``), so RSS measures what training needs, not
  the allocator's history. Limit: within 25% either way (``|estimate / measured - 1| / 0.25``).
- ``rss_growth``: RSS after the last of 24 bf16 Trainer steps of a tiny Llama over RSS after step 6
  (length-grouped MedMCQA batches: a new sequence length almost every step, mcqtune/training/memory.py),
  with mcqtune's bounded kernel caches (limit 1.10) and, as the control that shows the guard can fail,
  with the caches at their default size (expected above 1.10 on CPUs whose bf16 matmuls run in oneDNN).
- ``freed_buffers``: RSS kept after five 4 MiB buffers are freed between small live blocks and
  mcqtune's ``release_freed_memory`` runs, as after every training step (limit 1 MiB), and without it
  (plain torch: expected >= 16 MiB).
- ``ray_unreachable``: seconds for ``mcqtune compare --backend ray`` to refuse an address nobody listens
  on, over the connect timeout + 5 s (not Ray's minutes of retries).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

ESTIMATE_METHODS = ("lora", "qlora", "full")
ESTIMATE_STEPS, ESTIMATE_BATCH, ESTIMATE_TOLERANCE = 3, 4, 0.25
RSS_STEPS, RSS_EARLY_STEP, RSS_GROWTH_LIMIT = 24, 6, 1.10
FREED_LIMIT_MIB, FREED_PLAIN_MIB = 1.0, 16.0
# Tensors of 64 KiB and more get their own mapping, unmapped when freed; the heap top is trimmed at once.
RETURN_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}

_ESTIMATE_SCRIPT = """
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

_RSS_SCRIPT = """
import json, os, sys
import mcqtune  # first, as the CLI does: sets the cache bound before torch loads
from mcqtune.config import build_config
from mcqtune.data import bundled_path, load_examples
from mcqtune.models import load_tokenizer, resolve_model
from mcqtune.prompt import PromptEncoder
from mcqtune.training.trainer import Trainer

model_dir, steps = sys.argv[1], int(sys.argv[2])
resolved = resolve_model(model_dir)
rows = load_examples(bundled_path("medmcqa", "train"), limit=8 * steps).examples
config = build_config({"method": "lora", "objective": "letter", "model": model_dir, "max_steps": steps,
                       "batch_size": 8, "precision": "bf16", "method_options": {"r": 4}})
trainer = Trainer(config, resolved, PromptEncoder(load_tokenizer(resolved)), rows)
page = os.sysconf("SC_PAGE_SIZE")
curve = []
for _ in range(steps):
    trainer.step()
    with open("/proc/self/statm") as f:
        curve.append(int(f.read().split()[1]) * page / 2**20)
print(json.dumps(curve))
"""

_HOLES_SCRIPT = """
import os, sys
if sys.argv[1] == "mcqtune":
    import mcqtune  # as the CLI does
    from mcqtune.training.memory import release_freed_memory
else:
    release_freed_memory = lambda: None
import torch

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

elements = 4 * 2**20 // 4  # a 4 MiB activation
for _ in range(3):
    del_me = torch.ones(elements)  # glibc mmaps these, then raises its threshold to their size
    del del_me
kept, growth = [], 0.0
for _ in range(5):
    before = rss_mib()
    buffer = torch.ones(elements)
    kept.append(torch.ones(1000))  # a small block that outlives it, as parameters' grads and states do
    del buffer
    release_freed_memory()  # what the trainer does after every step
    growth += rss_mib() - before
print(growth)
"""


def _python(args: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> str:
    """Run ``python -c ...`` with mcqtune's sources and the repository importable; its last stdout line."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"{args[:2]} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def estimate_vs_measured(work: Path, methods: tuple[str, ...] = ESTIMATE_METHODS) -> dict[str, Any]:
    import torch
    from bench.gpu_check import estimate_for, train_config

    from mcqtune.models import resolve_precision

    results = {}
    for method in methods:
        output = work / f"estimate-{method}"
        config = train_config(method, {}, ESTIMATE_STEPS, ESTIMATE_BATCH, output)
        estimate = estimate_for(config, resolve_precision("auto", torch.device("cpu")))
        args = ["-c", _ESTIMATE_SCRIPT, method, str(output), str(ESTIMATE_STEPS), str(ESTIMATE_BATCH)]
        record = json.loads(_python(args, {**os.environ, **RETURN_FREED_MEMORY}))
        measured = (record["peak_mib"] - record["baseline_mib"]) * 2**20
        ratio = estimate.total_bytes / measured
        results[method] = {
            "estimate_mib": round(estimate.total_bytes / 2**20, 1),
            "measured_mib": round(measured / 2**20, 1),
            "estimate_over_measured": round(ratio, 3),
            "of_limit": round(abs(ratio - 1) / ESTIMATE_TOLERANCE, 3),
        }
    return results


def tiny_model_dir(work: Path) -> Path:
    """A tiny random Llama with the bundled model's tokenizer (tests/conftest.py builds the same one)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mcqtune.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(None))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = work / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def rss_growth(work: Path) -> dict[str, Any]:
    from mcqtune.training.memory import PRIMITIVE_CACHE_VARIABLES

    model = str(tiny_model_dir(work))
    bounded = {k: v for k, v in os.environ.items() if k not in PRIMITIVE_CACHE_VARIABLES}  # mcqtune's own
    unbounded = {**os.environ, **dict.fromkeys(PRIMITIVE_CACHE_VARIABLES, "1024")}
    results: dict[str, Any] = {"limit": RSS_GROWTH_LIMIT}
    for name, env in (("mcqtune", bounded), ("default_caches", unbounded)):
        curve = json.loads(_python(["-c", _RSS_SCRIPT, model, str(RSS_STEPS)], env))
        growth = curve[-1] / curve[RSS_EARLY_STEP - 1]
        results[name] = {"growth": round(growth, 3), "of_limit": round(growth / RSS_GROWTH_LIMIT, 3)}
    return results


def freed_buffers() -> dict[str, Any]:
    growth = {mode: float(_python(["-c", _HOLES_SCRIPT, mode], timeout=300)) for mode in ("mcqtune", "plain")}
    return {
        "mcqtune_mib": round(growth["mcqtune"], 2),
        "plain_mib": round(growth["plain"], 2),
        "of_limit": round(growth["mcqtune"] / FREED_LIMIT_MIB, 3),
        "plain_over_expected": round(growth["plain"] / FREED_PLAIN_MIB, 3),
    }


def ray_unreachable(work: Path) -> dict[str, Any]:
    from mcqtune.cli.main import main
    from mcqtune.compare.backends import CONNECT_TIMEOUT_SECONDS

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["compare", "--backend", "ray", "--address", f"127.0.0.1:{port}", "--quick"]
    argv += ["--output", str(work / "ray-compare"), "--methods", "lora"]
    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    limit = CONNECT_TIMEOUT_SECONDS + 5
    return {"exit_code": code, "seconds": round(seconds, 2), "of_limit": round(seconds / limit, 3)}


def run_limits(ctx: Any = None, quick: bool = False) -> dict[str, Any]:
    """Every limit; ``ctx`` is bench/run.py's Context (only its settings' quick flag is read)."""
    quick = quick or bool(ctx is not None and ctx.settings.train_steps <= 10)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mcqtune-limits-") as tmp:
        work = Path(tmp)
        methods = ESTIMATE_METHODS[:1] if quick else ESTIMATE_METHODS
        for name, measure in (
            ("ray_unreachable", lambda: ray_unreachable(work)),
            ("freed_buffers", freed_buffers),
            ("rss_growth", lambda: rss_growth(work)),
            ("estimate", lambda: estimate_vs_measured(work, methods)),
        ):
            try:
                results[name] = measure()
            except Exception as exc:  # one failed measurement must not hide the others
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the estimate for LoRA only")
    args = parser.parse_args(argv)
    print(json.dumps(run_limits(quick=args.quick), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
