"""Memory of serving many artifacts on one base: peak RSS with 1 and with 5 artifacts of each method.

    flock /tmp/heavy.lock .venv/bin/python bench/serve_memory.py [--runs runs/serve-memory]
        [--methods lora,qlora,...] [--output runs/serve-memory/memory.json]

For each method it trains one tiny run on the bundled model (1 step; reused when ``--runs`` already has
it), then in a fresh process per (method, count) loads the server's engine (the base, as ``mcqtune
serve`` does) and attaches 1 or 5 copies of that run under different names (each copy's tensors are
read and held separately, exactly as 5 different runs of that method would be). The table gives peak
RSS (VmHWM) after the base alone, with 1 and with 5 artifacts, and checks that going from 1 to 5 grows
by at most 4 x the artifact's size + 10% (``full`` holds its own model copy, which is its artifact).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
from pathlib import Path

COUNTS = (1, 5)
TOLERANCE = 1.10  # growth may exceed the artifacts' own bytes by 10%
MIB = 2**20


def peak_and_current_mib() -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def worker(run: Path, count: int, model: str | None) -> dict:
    """In this (fresh) process: the server's engine, then ``count`` copies of ``run`` attached."""
    from mcqtune.serving.engine import open_engine

    engine = open_engine(model, "auto", batch_size=16)
    gc.collect()
    base_peak, base_current = peak_and_current_mib()
    copies = sorted(p for p in run.parent.glob(f"{run.name}-copy*") if p.is_dir())[:count]
    for index, directory in enumerate(copies):
        engine.attach(f"a{index}", directory)
    gc.collect()
    peak, current = peak_and_current_mib()
    return {"base_peak_mib": base_peak, "base_rss_mib": base_current, "peak_mib": peak, "rss_mib": current}


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
    from mcqtune.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/serve-memory", help="where the tiny runs are trained")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    parser.add_argument("--model", help="base model (default: bundled)")
    parser.add_argument("--output", help="write the table as JSON here")
    parser.add_argument("--worker", nargs=2, metavar=("RUN", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), int(args.worker[1]), args.model)))
        return 0

    rows = []
    for method in args.methods.split(","):
        run = Path(args.runs) / method
        train(method, run, args.model)
        for index in range(max(COUNTS)):
            copy = run.parent / f"{method}-copy{index}"
            if not copy.is_dir():
                shutil.copytree(run, copy)
        size = json.loads((run / "mcqtune.json").read_text())["artifact_bytes"] / MIB
        measured = {}
        for count in COUNTS:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", str(run), str(count)]
                + (["--model", args.model] if args.model else []),
                check=True,
                capture_output=True,
                text=True,
            )
            measured[count] = json.loads(out.stdout.strip().splitlines()[-1])
        growth = measured[5]["peak_mib"] - measured[1]["peak_mib"]
        allowed = (max(COUNTS) - min(COUNTS)) * size * TOLERANCE
        rows.append(
            {
                "method": method,
                "artifact_mib": round(size, 2),
                "base_peak_mib": round(measured[1]["base_peak_mib"], 1),
                "peak_1_mib": round(measured[1]["peak_mib"], 1),
                "peak_5_mib": round(measured[5]["peak_mib"], 1),
                "rss_1_mib": round(measured[1]["rss_mib"], 1),
                "rss_5_mib": round(measured[5]["rss_mib"], 1),
                "growth_1_to_5_mib": round(growth, 1),
                "allowed_mib": round(allowed, 1),
                "within": growth <= allowed,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    header = ("method", "artifact", "base alone", "1 artifact", "5 artifacts", "growth 1→5", "allowed")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [r["method"], f"{r['artifact_mib']} MiB"]
        cells += [f"{r[k]:.0f} MiB" for k in ("base_peak_mib", "peak_1_mib", "peak_5_mib")]
        cells += [
            f"{r['growth_1_to_5_mib']:.1f} MiB",
            f"{r['allowed_mib']:.1f} MiB {'ok' if r['within'] else 'OVER'}",
        ]
        print("| " + " | ".join(cells) + " |")
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0 if all(r["within"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
