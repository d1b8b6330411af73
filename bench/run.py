"""mcqtune's performance benchmark: one command, one table, one JSON file (docs/PERFORMANCE.md).

    make bench                           # = .venv/bin/python bench/run.py  (full, <= 15 min on 2 cores)
    .venv/bin/python bench/run.py --quick          # tiny settings, a smoke test (~2 min on a quiet machine)
    .venv/bin/python bench/run.py --only train,eval # some sections
    .venv/bin/python bench/run.py --levers          # also the lever A/Bs (docs/PERFORMANCE.md, lever log)

Same machine, same model (the bundled SmolLM2-135M), same MedMCQA/ARC-Easy rows, same run. A and B
of every throughput comparison run in one process, interleaved step by step (or chunk by chunk, in
A-B-B-A order), so machine noise hits both; peak RSS and start-up need their own processes
(``bench/worker.py``). Sections:

0. ``trl``: the headline: the seed notebook's TRL ``SFTTrainer`` recipe (bench/trl_recipe.py) vs
   ``mcqtune train``, whole processes, in the precision mcqtune resolves on the host (named in every
   row); TRL left at its defaults beside it (the same run, or a few steps extrapolated where TRL's
   default bf16 is emulated); real-token share and MFU of both; both artifacts' accuracy;
1. ``train``: mcqtune's LoRA step (letter objective) vs the naive HF ``Trainer`` recipe (bench/naive.py),
   real (non-pad) tokens/s, then letter-scored validation accuracy of both after the same examples;
2. ``peak`` + MFU: fp32/bf16 matmul peak; training FLOP/s (4 x non-embedding params per real token
   for frozen-base methods, 6 x for full) over the bf16 peak;
3. ``cloze``: packed options vs K copies of the question: fp32 log-likelihood equality, eval and
   ranking-training questions/s, on ARC-Easy and MedMCQA;
4. ``eval``: letter-logit scoring vs greedy generate-and-parse, questions/s, accuracy, agreement;
5. ``memory``: peak RSS of ``train()`` for every registered method at the same batch (own process
   each), frozen-base weight bytes;
6. ``memory_curve``: RSS after every step of the Trainer over 200 steps (lora, full, adapter, ranking),
   each in its own process, and the peak within each step; the target: the most RSS any later release of
   freed memory kept over what the first (step 20) kept, <= 1.1 (``bench/helpers.retained_growth``);
7. ``startup``: ``mcqtune eval`` start to first scored batch, cached model vs first GGUF load;
8. ``lm_eval``: ``bench/lm_eval_parity.py``: questions/s of mcqtune's letter and cloze scoring against
   lm-evaluation-harness's loglikelihood scoring of the same questions, and per-question agreement.
   Its first run installs lm-eval into ``.bench-venv`` (the package index is needed once).

Each section is a module of ``bench/sections/`` (``section_<name>(ctx)``); what they share (settings,
targets, the model and rows) is ``bench/context.py``; the table and the docs block are
``bench/summary.py``. This file only parses the flags and runs the sections in turn.

Timings are never asserted (tests/test_bench.py checks only that the compared things are equal).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# After ROOT is on sys.path:
from bench.context import FULL, QUICK, SECTIONS, TARGETS, Context, machine_info  # noqa: E402
from bench.sections import (  # noqa: E402
    cloze,
    lm_eval,
    memory,
    memory_curve,
    peak,
    startup,
    train,
    trl,
)
from bench.sections import eval as eval_section  # noqa: E402
from bench.spawn import log  # noqa: E402
from bench.summary import DOC, format_table, results_block, summarize, update_doc  # noqa: E402


def section_levers(ctx: Context) -> dict[str, Any]:
    from bench.levers import run_levers

    return run_levers(ctx)


def section_limits(ctx: Context) -> dict[str, Any]:
    """The time and memory limits that were test assertions, as ratios to each limit (bench/limits.py)."""
    from bench.limits import run_limits

    return run_limits(ctx)


SECTION_FUNCS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "peak": peak.section_peak,
    "trl": trl.section_trl,
    "train": train.section_train,
    "cloze": cloze.section_cloze,
    "eval": eval_section.section_eval,
    "memory": memory.section_memory,
    "memory_curve": memory_curve.section_memory_curve,
    "startup": startup.section_startup,
    "lm_eval": lm_eval.section_lm_eval,
    "levers": section_levers,
    "limits": section_limits,  # only with --only limits
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke test of every section")
    parser.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)},levers")
    parser.add_argument("--levers", action="store_true", help="also run the lever A/Bs (bench/levers.py)")
    parser.add_argument(
        "--compile-lever", action="store_true", help="levers: also torch.compile (many minutes on 2 cores)"
    )
    parser.add_argument(
        "--generate-tokens",
        type=int,
        default=None,
        help="eval: max_new_tokens of the generate-and-parse baseline (default 8)",
    )
    parser.add_argument(
        "--no-update-doc",
        action="store_true",
        help="a full run (no --quick/--only) rewrites the results block of docs/PERFORMANCE.md unless given",
    )
    parser.add_argument(
        "--trl-steps", type=int, help="trl: LoRA steps of both recipes (default 60; issue 12's long run: 300)"
    )
    parser.add_argument(
        "--trl-precision",
        choices=("bf16", "fp32"),
        help="trl: the precision both recipes train in (default: the one mcqtune resolves on this host)",
    )
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench"), help="where the JSON and table go")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.trl_steps:
        settings = dataclasses.replace(settings, trl_steps=args.trl_steps)
    if args.trl_precision:
        settings = dataclasses.replace(settings, trl_precision=args.trl_precision)
    sections = args.only.split(",") if args.only else list(SECTIONS) + (["levers"] if args.levers else [])
    unknown = [s for s in sections if s not in SECTION_FUNCS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")
    if "train" in sections and "peak" not in sections:
        sections.insert(0, "peak")  # MFU needs the peak of the same run
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = "quick" if args.quick else "full"
    json_path = out_dir / f"bench-{mode}.json"

    from mcqtune.quiet import quiet_libraries

    quiet_libraries()
    import datasets

    datasets.disable_progress_bars()
    started = time.perf_counter()
    results: dict[str, Any] = {
        "mode": mode,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average_start": os.getloadavg(),
        "settings": dataclasses.asdict(settings),
        "targets": TARGETS,
        "sections": {},
        "section_seconds": {},
    }
    ctx = Context(settings, out_dir)
    ctx.compile_lever = args.compile_lever
    ctx.generate_tokens = args.generate_tokens or ctx.generate_tokens
    for name in sections:
        log(f"section {name}")
        t = time.perf_counter()
        try:
            results["sections"][name] = SECTION_FUNCS[name](ctx)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            results["sections"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        results["section_seconds"][name] = round(time.perf_counter() - t, 1)
        json_path.write_text(json.dumps(results, indent=1, default=str))
    results["load_average_end"] = os.getloadavg()
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    rows = summarize(results)
    results["table"] = [list(r) for r in rows]
    table = format_table(rows)
    json_path.write_text(json.dumps(results, indent=1, default=str))
    (out_dir / f"bench-{mode}.md").write_text(table + "\n")
    m = results["machine"]
    print(
        f"\nmcqtune bench ({mode}), {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), {results['total_seconds']:.0f} s, "
        f"load average {results['load_average_start'][0]:.1f} -> {results['load_average_end'][0]:.1f}"
    )
    print(table)
    failed = [n for n, r in results["sections"].items() if isinstance(r, dict) and "error" in r]
    if failed:
        print(f"sections that failed: {', '.join(failed)} (see the traceback above)")
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}")
    full_run = not args.quick and not args.only and not args.no_update_doc and not failed
    if full_run and update_doc(results_block(results, table)):
        print(f"updated the results block of {DOC.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
