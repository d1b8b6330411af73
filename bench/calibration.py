"""What temperature scaling does to a trained artifact's option probabilities on more rows than its
training run validated on (docs/SERVING.md, "Option probabilities: calibrated or not").

    .venv/bin/python bench/calibration.py --run RUN_DIR --data arc_easy --n 500

Scores the first N validation rows with the artifact (its own formulation and prompt), fits the
temperature on them as training does (mcqtune/evaluation/temperature.py) and prints ECE, Brier and NLL
before and after, "after" cross-fitted over 5 folds, beside the temperature the artifact's manifest
carries (fitted by training on its own, usually smaller, validation split).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mcqtune.data import bundled_path, load_examples
from mcqtune.evaluation.temperature import temperature_summary
from mcqtune.inference import Predictor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained run directory")
    parser.add_argument("--data", default="arc_easy", help="a bundled dataset (its validation split)")
    parser.add_argument("--n", type=int, default=500, help="validation rows")
    args = parser.parse_args()
    examples = load_examples(bundled_path(args.data, "validation")).examples[: args.n]
    predictor = Predictor.open(None, {"run": args.run})
    result = predictor.score(examples, "run")
    summary = temperature_summary(result.scored)
    print(f"run {args.run}: manifest temperature {predictor.temperature('run')}")
    print(json.dumps(summary, indent=2))
    print("| rows | temperature | ECE before -> after | Brier before -> after | NLL before -> after |")
    print("|---|---|---|---|---|")
    print(
        f"| {summary['n']} {args.data} validation | {summary['temperature']:.2f} | "
        f"{summary['ece_before']:.3f} -> {summary['ece_after']:.3f} | "
        f"{summary['brier_before']:.3f} -> {summary['brier_after']:.3f} | "
        f"{summary['nll_before']:.3f} -> {summary['nll_after']:.3f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
