"""Memory of serving many artifacts on one base: RSS with 1 and with 5 artifacts of each method.

    .venv/bin/python bench/serve_memory.py [--runs DIR] [--methods lora,qlora,...]
        [--output memory.json]

For each method it trains one tiny run on the bundled model (1 step: only the artifact's size matters;
kept in ``--runs``, by default a directory under the system's temp dir, and reused) and copies it 5
times. Then, in a fresh process, it loads the server's engine with the base those artifacts attach to
(QLoRA: its 4-bit base) and answers a question, so that the base and the forward pass's buffers are in
place; resets the peak RSS there (VmHWM, through /proc/self/clear_refs) and attaches the copies under
different names one by one, answering a question 3 times with each (each copy's tensors are read and held
separately, exactly as 5 different runs would be). The table gives the RSS of the base alone and the
peak RSS with 1 and with 5 artifacts attached. The check, for every method that shares the base: from 1
to 5 artifacts the peak grows by at most those 4 artifacts' own size + 10%. ``full`` holds a model of
its own per artifact and is only reported. Prints a Markdown table; exits 1 if a sharing method is over.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.worker import _reset_peak, _status_mib  # noqa: E402

from mcqtune.artifacts import MANIFEST  # noqa: E402

COUNT = 5
TOLERANCE = 1.10  # growth may exceed the artifacts' own bytes by 10%
MIB = 2**20
# Questions each artifact answers: the allocator's arenas settle after the first passes of a method's
# forward path (prefix: one row per option); measured, a 2nd pass still grew RSS by 3 MiB, a 3rd not.
ANSWERS = 3
VERDICTS = {True: "ok", False: "OVER", None: "(own model copy: no target)"}
DEFAULT_RUNS = Path(tempfile.gettempdir()) / "mcqtune-serve-memory"


def worker(run: Path, model: str | None) -> dict:
    """In this (fresh) process: the server's engine with the base these artifacts attach to, then the
    ``COUNT`` copies of ``run`` attached and each used to answer ``ANSWERS`` questions (so that its
    weights are resident: safetensors maps files, and untouched pages would not count)."""
    from mcqtune.data import bundled_path, load_examples
    from mcqtune.methods import get_method
    from mcqtune.serving.engine import open_engine

    question = load_examples(bundled_path("arc_easy", "validation"), limit=1).examples
    manifest = json.loads((run / MANIFEST).read_text())
    method, options = get_method(manifest["method"]), manifest["method_options"]
    engine = open_engine(model, "auto", batch_size=16)
    if method.shares_base:  # QLoRA's 4-bit base is its base: loaded before counting
        engine.predictor.base(method.base_key(options), method, options)
    engine.score(question, None)  # the forward pass's own buffers, before counting
    copies = sorted(p for p in run.parent.glob(f"{run.name}-copy*") if p.is_dir())[:COUNT]
    gc.collect()
    record = {"base_rss_mib": _status_mib("VmRSS")}
    if not _reset_peak():
        raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs): Linux >= 4.0 needed")
    for count, directory in enumerate(copies, start=1):
        engine.attach(directory.name, directory)
        for _ in range(ANSWERS):
            engine.score(question, directory.name)
        if count in (1, COUNT):
            gc.collect()
            record[f"peak_{count}_mib"] = _status_mib("VmHWM")
            record[f"rss_{count}_mib"] = _status_mib("VmRSS")
    return record


def train(method: str, output: Path, model: str | None) -> None:
    if (output / "metrics.json").is_file():
        return
    from mcqtune.cli.main import main as mcqtune

    argv = ["train", "--method", method, "--train", "arc_easy", "--no-validation", "--objective", "ranking"]
    argv += ["--max-steps", "1", "--batch-size", "2", "--train-limit", "4", "--output", str(output)]
    argv += ["--quiet", "--overwrite", *(["--model", model] if model else [])]
    if mcqtune(argv) != 0:
        raise SystemExit(f"training {method} failed")


def main(argv: list[str] | None = None) -> int:
    from mcqtune.methods import METHODS, get_method

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs", default=str(DEFAULT_RUNS), help=f"where the tiny runs are kept ({DEFAULT_RUNS})"
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    parser.add_argument("--model", help="base model (default: bundled)")
    parser.add_argument("--output", help="write the table as JSON here")
    parser.add_argument("--worker", metavar="RUN", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(Path(args.worker), args.model)))
        return 0

    rows = []
    for method in args.methods.split(","):
        run = Path(args.runs) / method
        train(method, run, args.model)
        for index in range(COUNT):
            copy = run.parent / f"{method}-copy{index}"
            if not copy.is_dir():
                shutil.copytree(run, copy)
        size = json.loads((run / MANIFEST).read_text())["artifact_bytes"] / MIB
        command = [
            sys.executable,
            __file__,
            "--worker",
            str(run),
            *(["--model", args.model] if args.model else []),
        ]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{method}: the measuring process failed:\n{out.stderr[-3000:]}")
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        growth = measured[f"peak_{COUNT}_mib"] - measured["peak_1_mib"]
        allowed = (COUNT - 1) * size * TOLERANCE
        rows.append(
            {
                "method": method,
                "artifact_mib": round(size, 3),
                **{k: round(v, 1) for k, v in measured.items()},
                "growth_1_to_5_mib": round(growth, 1),
                "allowed_mib": round(allowed, 1),
                "shares_base": get_method(method).shares_base,
                # the target holds for methods that share the base; `full` is a model per artifact
                "within": growth <= allowed if get_method(method).shares_base else None,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    header = (
        "method",
        "artifact",
        "base alone",
        "peak, 1 artifact",
        "peak, 5 artifacts",
        "growth 1→5",
        "allowed (4 × artifact + 10%)",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [r["method"], f"{r['artifact_mib']:.2f} MiB"]
        cells += [f"{r[k]:.0f} MiB" for k in ("base_rss_mib", "peak_1_mib", "peak_5_mib")]
        cells += [
            f"{r['growth_1_to_5_mib']:.1f} MiB",
            f"{r['allowed_mib']:.1f} MiB {VERDICTS[r['within']]}",
        ]
        print("| " + " | ".join(cells) + " |")
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 1 if any(r["within"] is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
