"""The docs/EVALUATION.md study: letter bias zero-shot and after LoRA, with and without --shuffle-options.

For each bundled dataset: zero-shot letter scoring, then LoRA trained on the letter objective twice
(identical but for ``--shuffle-options``), each evaluated on the same validation rows with cyclic
permutations and content-free debiasing. Prints one Markdown table (the one in docs/EVALUATION.md)
and writes it to OUT/table.md. Every step is an ordinary ``mcqtune`` command, printed before it runs.

    .venv/bin/python bench/eval_study.py                 # ~20 min on 2 idle cores
    .venv/bin/python bench/eval_study.py --steps 20 --limit 40 --datasets medmcqa   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

MCQTUNE = [sys.executable, "-m", "mcqtune"]


def run(args: list[str], log: Path) -> None:
    print("$ mcqtune " + shlex.join(args), flush=True)
    with log.open("w", encoding="utf-8") as out:
        subprocess.run([*MCQTUNE, *args], check=True, stdout=out, stderr=subprocess.STDOUT)


def pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.1f}%"


def letters(dist: dict[str, float]) -> str:
    return " ".join(f"{k}:{v * 100:.0f}" for k, v in dist.items())


def row(name: str, m: dict) -> str:
    bias, cal, perm, deb = m["letter_bias"], m["calibration"], m["permutations"], m["debias"]
    after = deb["all_rows"]["after"]
    return (
        f"| {name} | {pct(m['accuracy'])} | {pct(m['majority_baseline'])} | "
        f"{letters(m['predicted_letter_distribution'])} | {bias['tv_distance']:.3f} | "
        f"{pct(bias['macro_recall'])} | {cal['ece']:.3f} | {cal['brier']:.3f} | "
        f"{pct(perm['accuracy_mean'])} | {pct(perm['accuracy_circular'])} | "
        f"{pct(perm['answer_changes_share'])} | {pct(after['accuracy'])} / "
        f"{pct(deb['outside_calibration']['after']['accuracy'])} | {after['tv_distance']:.3f} |"
    )


HEADER = (
    "| data, setup | accuracy | majority | predicted letters (%) | TV | macro recall | ECE | Brier | "
    "acc. mean over orders | circular | answer changes | debiased acc. (all / outside calib.) | "
    "debiased TV |\n"
    "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/eval-study", help="run directories, reports and logs")
    parser.add_argument("--datasets", default="medmcqa,arc_easy")
    parser.add_argument("--steps", type=int, default=150, help="LoRA steps per arm (batch 4)")
    parser.add_argument("--limit", type=int, default=200, help="validation rows evaluated")
    parser.add_argument("--calibration-size", type=int, default=50)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    evaluation = ["--scoring", "letter", "--limit", str(args.limit), "--permutations", "cyclic", "--debias"]
    evaluation += ["--calibration-size", str(args.calibration_size), "--seed", "0"]
    lines = [HEADER]
    start = time.perf_counter()
    for data in args.datasets.split(","):
        report = out / f"zero-shot-{data}"
        run(["eval", "--data", data, *evaluation, "--report", str(report)], out / f"zero-shot-{data}.log")
        lines.append(row(f"{data}, zero-shot", json.loads((report / "metrics.json").read_text())))
        for arm in ("plain", "shuffle"):
            run_dir = out / f"lora-{data}-{arm}"
            train = ["train", "--method", "lora", "--objective", "letter", "--train", data]
            train += ["--validation", data, "--max-steps", str(args.steps), "--batch-size", "4"]
            train += ["--eval-steps", str(max(args.steps // 3, 1)), "--eval-limit", "64"]
            train += ["--final-eval-limit", str(args.limit), "--seed", "42", "--output", str(run_dir)]
            train += [
                "--overwrite",
                "--quiet",
                "--shuffle-options" if arm == "shuffle" else "--no-shuffle-options",
            ]
            run(train, out / f"lora-{data}-{arm}.train.log")
            report = out / f"report-{data}-{arm}"
            run(
                ["eval", "--adapter", str(run_dir), "--data", data, *evaluation, "--report", str(report)],
                out / f"lora-{data}-{arm}.eval.log",
            )
            name = f"{data}, LoRA letter {args.steps} steps" + (
                ", `--shuffle-options`" if arm == "shuffle" else ", `--no-shuffle-options`"
            )
            lines.append(row(name, json.loads((report / "metrics.json").read_text())))
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min; table in {out / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
