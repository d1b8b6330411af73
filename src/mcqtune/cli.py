"""The ``mcqtune`` command line: data check, train, eval, predict, export, demo.

User errors (bad data, bad config, missing model, wrong artifact) print one clear line and exit 2;
tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

EXIT_USER_ERROR = 2


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import warnings

    warnings.filterwarnings("ignore", message=".*legacy.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def _user_errors() -> tuple[type[BaseException], ...]:
    from mcqtune.artifacts import ArtifactError
    from mcqtune.config import ConfigError
    from mcqtune.data import DataError
    from mcqtune.models import ModelError

    return (ArtifactError, ConfigError, DataError, ModelError)


# ---------------------------------------------------------------- data check
def cmd_data_check(args: argparse.Namespace) -> int:
    from mcqtune.data import check_file
    from mcqtune.prompt import PromptEncoder

    token_length = None
    if not args.no_tokens:
        from mcqtune.models import load_tokenizer, resolve_model

        encoder = PromptEncoder(load_tokenizer(resolve_model(args.model)))
        token_length = encoder.letter_prompt_length
    report = check_file(args.file, args.format, token_length=token_length)
    print(report.format_text())
    return 1 if report.problems else 0


# ---------------------------------------------------------------- train
TRAIN_FLAGS = (
    "method",
    "objective",
    "model",
    "train",
    "validation",
    "format",
    "output",
    "max_steps",
    "epochs",
    "batch_size",
    "grad_accum",
    "lr",
    "weight_decay",
    "warmup_ratio",
    "scheduler",
    "seed",
    "eval_steps",
    "eval_limit",
    "final_eval_limit",
    "train_limit",
    "precision",
    "on_bad_rows",
)


def parse_option_pairs(pairs: list[str] | None) -> dict[str, Any]:
    """``--option r=8 --option target_modules=attention`` -> typed dict (YAML scalar rules)."""
    import yaml

    from mcqtune.config import ConfigError

    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option expects KEY=VALUE, got '{pair}'")
        options[key.strip()] = yaml.safe_load(value)
    return options


def cmd_train(args: argparse.Namespace) -> int:
    from mcqtune.config import build_config
    from mcqtune.train import train

    flags = {name: getattr(args, name) for name in TRAIN_FLAGS}
    if args.no_validation:
        flags["validation"] = None
    options = parse_option_pairs(args.option)
    if options:
        flags["method_options"] = options
    if args.train_on_prompt:
        flags["prompt"] = {"train_on_prompt": True}
    if args.max_length:
        flags["prompt"] = {**flags.get("prompt", {}), "max_length": args.max_length}
    if args.train and args.validation is None and not args.no_validation and not _is_bundled(args.train):
        flags["validation"] = None  # a user file has no implicit validation split
    config = build_config(flags, args.config)
    if args.no_validation:
        config.validation = None
    train(config, show_progress=not args.quiet)
    return 0


def _is_bundled(spec: str) -> bool:
    from mcqtune.data import BUNDLED_DATASETS

    return spec.lower().replace("-", "_") in BUNDLED_DATASETS


# ---------------------------------------------------------------- eval / predict
def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load(args: argparse.Namespace):
    from mcqtune.artifacts import load_for_inference

    return load_for_inference(args.model, args.adapter, _device(), allow_pickle=args.allow_pickle)


def _scoring(args: argparse.Namespace, loaded) -> str:
    from mcqtune.config import resolve_scoring

    if args.scoring != "auto":
        return args.scoring
    if loaded.manifest:
        return loaded.manifest["scoring"]
    return resolve_scoring("auto", loaded.model.num_parameters())


def cmd_eval(args: argparse.Namespace) -> int:
    from mcqtune.atomic import atomic_write_json
    from mcqtune.data import load_examples, resolve_data
    from mcqtune.evaluate import compute_metrics, format_metrics, resolve_precision, score_examples
    from mcqtune.prompt import PromptEncoder

    path = resolve_data(args.data, "validation")
    data = load_examples(path, args.format, on_bad_rows=args.on_bad_rows, limit=args.limit)
    loaded = _load(args)
    scoring = _scoring(args, loaded)
    device = _device()
    encoder = PromptEncoder(loaded.tokenizer, loaded.prompt)
    packed = (loaded.manifest or {}).get("packing", True)
    scored = score_examples(
        loaded.model,
        encoder,
        data.examples,
        scoring,
        batch_size=args.batch_size,
        packed=packed,
        precision=resolve_precision(args.precision, device),
        device=device,
    )
    metrics = compute_metrics(scored)
    metrics["data"] = str(path)
    metrics["model"] = loaded.resolved.model_id
    metrics["adapter"] = str(args.adapter) if args.adapter else None
    if data.skipped:
        metrics["bad_rows_skipped"] = data.skipped
    source = f"adapter {args.adapter}" if args.adapter else f"zero-shot {loaded.resolved.model_id}"
    title = f"{path.name}: {source}"
    print(format_metrics(metrics, title))
    if args.output:
        atomic_write_json(args.output, metrics)
        print(f"wrote {args.output}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mcqtune.data import LETTERS, DataError, MCQExample, load_examples
    from mcqtune.evaluate import resolve_precision, score_examples
    from mcqtune.prompt import PromptEncoder

    if args.data:
        examples = load_examples(args.data, args.format, require_answer=False).examples
    else:
        if not args.question or not args.choice or len(args.choice) < 2:
            raise DataError("predict needs --data FILE, or --question and at least two --choice")
        examples = [MCQExample("cli", args.question.strip(), tuple(c.strip() for c in args.choice), None)]
    loaded = _load(args)
    scoring = _scoring(args, loaded)
    device = _device()
    scored = score_examples(
        loaded.model,
        PromptEncoder(loaded.tokenizer, loaded.prompt),
        examples,
        scoring,
        packed=(loaded.manifest or {}).get("packing", True),
        precision=resolve_precision(args.precision, device),
        device=device,
    )
    import json

    for example, probs, pred in zip(scored.examples, scored.probabilities, scored.predictions, strict=True):
        k = len(example.choices)
        if args.json:
            print(
                json.dumps(
                    {
                        "id": example.id,
                        "prediction": LETTERS[int(pred)],
                        "probabilities": {LETTERS[i]: round(float(probs[i]), 4) for i in range(k)},
                    }
                )
            )
            continue
        print(f"{example.id}: {LETTERS[int(pred)]}  ({scoring} scoring)")
        for i in range(k):
            mark = "*" if i == pred else " "
            print(f"  {mark} {LETTERS[i]}. {probs[i] * 100:5.1f}%  {example.choices[i]}")
    return 0


# ---------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from mcqtune.demo import run_demo

    return run_demo(Path(args.output), quick=args.quick)


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcqtune",
        description="Fine-tune causal LMs for multiple-choice QA with PEFT methods; evaluate them honestly.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="inspect and validate MCQA data files")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser(
        "check",
        help="rows, options per question, answer letters, majority share, token lengths, all problems",
        description="Validate a data file and summarise it. Exits 1 if any row has a problem.",
    )
    check.add_argument("file", help="data file, or a bundled name (medmcqa, arc_easy)")
    check.add_argument(
        "--format", default="auto", help="auto|medmcqa|medmcqa-raw|arc|mmlu-csv|jsonl|csv|parquet"
    )
    check.add_argument(
        "--model", default=None, help="tokenizer for token-length percentiles (default: bundled)"
    )
    check.add_argument(
        "--no-tokens", action="store_true", help="skip token-length percentiles (no model load)"
    )
    check.set_defaults(func=cmd_data_check)

    tr = sub.add_parser(
        "train",
        help="fine-tune with one method and save its artifact",
        description="Train a method on MCQA data. Precedence: method defaults < --config YAML < flags.",
    )
    tr.add_argument("--config", help="YAML file with any TrainConfig keys (see configs/)")
    tr.add_argument("--method", help="lora (default) or any registered method")
    tr.add_argument(
        "--objective",
        choices=("auto", "letter", "ranking"),
        help="letter: LM loss on the answer "
        "letter; ranking: cross-entropy over cloze option scores; auto: ranking below 1B params",
    )
    tr.add_argument(
        "--model", help="bundled name, local HF dir, .gguf file or hub id (default: bundled SmolLM2)"
    )
    tr.add_argument("--train", help="training data file or bundled name (default: medmcqa)")
    tr.add_argument("--validation", help="validation file or bundled name (default: the bundled split)")
    tr.add_argument("--no-validation", action="store_true", help="train without validation")
    tr.add_argument("--format", help="data format (default auto)")
    tr.add_argument("--output", help="run directory for the artifact, config and metrics")
    tr.add_argument("--max-steps", type=int, help="optimizer steps (default 200)")
    tr.add_argument("--epochs", type=float, help="epochs instead of --max-steps")
    tr.add_argument("--batch-size", type=int, help="questions per micro-batch (default 4)")
    tr.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    tr.add_argument("--lr", type=float, help="peak learning rate (default: per method)")
    tr.add_argument("--weight-decay", type=float)
    tr.add_argument("--warmup-ratio", type=float)
    tr.add_argument("--scheduler", choices=("linear", "cosine", "constant"))
    tr.add_argument("--seed", type=int)
    tr.add_argument("--eval-steps", type=int, help="validate every N steps, keep the best")
    tr.add_argument("--eval-limit", type=int, help="validation rows used during training (default 200)")
    tr.add_argument("--final-eval-limit", type=int, help="rows for the final validation (default all)")
    tr.add_argument("--train-limit", type=int, help="use only the first N training rows")
    tr.add_argument(
        "--precision", choices=("auto", "bf16", "fp32"), help="auto: bf16 autocast where supported"
    )
    tr.add_argument("--on-bad-rows", choices=("error", "skip"))
    tr.add_argument("--max-length", type=int, help="max tokens per sequence (question is shortened first)")
    tr.add_argument("--train-on-prompt", action="store_true", help="letter objective: loss on prompt too")
    tr.add_argument("--option", action="append", metavar="KEY=VALUE", help="method option, e.g. r=8")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)

    def add_model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="base model (default: the adapter's base, else bundled SmolLM2)")
        p.add_argument("--adapter", help="a mcqtune run directory (from train)")
        p.add_argument(
            "--scoring",
            default="auto",
            choices=("auto", "letter", "cloze"),
            help="default: the adapter's formulation; cloze for small base models, else letter",
        )
        p.add_argument("--format", default="auto")
        p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
        p.add_argument("--allow-pickle", action="store_true", help="allow loading pickled .bin weights")

    ev = sub.add_parser(
        "eval",
        help="accuracy, CI, majority baseline and letter distributions",
        description="Evaluate the base model or a trained artifact on a data file.",
    )
    add_model_args(ev)
    ev.add_argument("--data", required=True, help="data file or bundled name (validation split)")
    ev.add_argument("--limit", type=int, help="evaluate only the first N rows")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--on-bad-rows", default="error", choices=("error", "skip"))
    ev.add_argument("--output", help="write metrics JSON here")
    ev.set_defaults(func=cmd_eval)

    pr = sub.add_parser(
        "predict",
        help="answer questions and show every option's probability",
        description="Predict for one question (--question/--choice) or a JSONL file (--data).",
    )
    add_model_args(pr)
    pr.add_argument("--question")
    pr.add_argument("--choice", action="append", help="an option (repeat, in order)")
    pr.add_argument("--data", help="file of questions (answers optional)")
    pr.add_argument("--json", action="store_true", help="one JSON object per question")
    pr.set_defaults(func=cmd_predict)

    demo = sub.add_parser(
        "demo",
        help="zero-shot vs LoRA on bundled MedMCQA and ARC-Easy, one table",
        description="The end-to-end demo `make demo` runs.",
    )
    demo.add_argument("--output", default="runs/demo")
    demo.add_argument("--quick", action="store_true", help="tiny budget, for a smoke test")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s"
    )
    _quiet_libraries()
    try:
        return args.func(args)
    except _user_errors() as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
