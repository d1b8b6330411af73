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
    from mcqtune.errors import UserError

    # OSError: a full disk, a permission denied, a file that vanished: the message names the path.
    return (UserError, OSError)


# ---------------------------------------------------------------- data check
def cmd_data_check(args: argparse.Namespace) -> int:
    from mcqtune.data import check_file, resolve_data
    from mcqtune.prompt import PromptEncoder

    token_length = None
    if not args.no_tokens:
        from mcqtune.models import load_tokenizer, resolve_model

        encoder = PromptEncoder(load_tokenizer(resolve_model(args.model)))
        token_length = encoder.letter_prompt_length
    report = check_file(resolve_data(args.file, args.split), args.format, token_length=token_length)
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
    "shuffle_options",
    "save_steps",
    "keep_checkpoints",
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


# Method options with their own flags (every option also works as --option KEY=VALUE and in YAML).
# A flag a method does not read is an error naming the method (config.validate_method).
METHOD_OPTION_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--top-k", "top_k", {"type": int, "help": "subset: train the last K decoder layers (default 10)"}),
    (
        "--train-head",
        "train_head",
        {"action": argparse.BooleanOptionalAction, "help": "subset: train the LM head"},
    ),
    ("--lora-r", "r", {"type": int, "help": "lora/qlora: rank (default 16)"}),
    ("--lora-alpha", "alpha", {"type": float, "help": "lora/qlora: alpha (default 32)"}),
    ("--lora-dropout", "dropout", {"type": float, "help": "lora/qlora: dropout (default 0.05)"}),
    (
        "--target-modules",
        "target_modules",
        {"help": "lora/qlora: all-linear (default), attention, mlp or a comma-separated list"},
    ),
    (
        "--rslora",
        "use_rslora",
        {"action": argparse.BooleanOptionalAction, "help": "lora/qlora: rsLoRA scaling"},
    ),
    ("--dora", "use_dora", {"action": argparse.BooleanOptionalAction, "help": "lora/qlora: DoRA"}),
    ("--quant-type", "quant_type", {"choices": ("nf4", "fp4"), "help": "qlora: 4-bit type (default nf4)"}),
    (
        "--double-quant",
        "double_quant",
        {"action": argparse.BooleanOptionalAction, "help": "qlora: quantize the scales too (default on)"},
    ),
    (
        "--compute-dtype",
        "compute_dtype",
        {"choices": ("bf16", "fp16", "fp32"), "help": "qlora: matmul dtype"},
    ),
    (
        "--optimizer",
        "optimizer",
        {
            "choices": ("paged_adamw_32bit", "paged_adamw_8bit", "adamw"),
            "help": "qlora: optimizer (paged ones need CUDA; CPU uses AdamW)",
        },
    ),
    (
        "--adapter-config",
        "config",
        {"choices": ("pfeiffer", "houlsby"), "help": "adapter: where adapters sit"},
    ),
    ("--bottleneck", "bottleneck", {"type": int, "help": "adapter: bottleneck width (default 16)"}),
    ("--non-linearity", "non_linearity", {"help": "adapter: relu (default), swish, gelu"}),
    (
        "--num-virtual-tokens",
        "num_virtual_tokens",
        {"type": int, "help": "prefix: prefix length (default 20)"},
    ),
    (
        "--prefix-projection",
        "prefix_projection",
        {"action": argparse.BooleanOptionalAction, "help": "prefix: learn it through an MLP"},
    ),
]


def method_option_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The method options given as their own flags (None: not given)."""
    options = {}
    for flag, key, _ in METHOD_OPTION_FLAGS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            options[key] = value
    return options


def cmd_train(args: argparse.Namespace) -> int:
    from mcqtune.config import build_config
    from mcqtune.training.recipe import TrainingInterrupted, train

    flags = {name: getattr(args, name) for name in TRAIN_FLAGS}
    if args.no_validation:
        flags["validation"] = None
    options = {**method_option_flags(args), **parse_option_pairs(args.option)}
    if options:
        flags["method_options"] = options
    if args.train_on_prompt:
        flags["prompt"] = {"train_on_prompt": True}
    if args.max_length is not None:
        flags["prompt"] = {**flags.get("prompt", {}), "max_length": args.max_length}
    if args.train and args.validation is None and not args.no_validation and not _is_bundled(args.train):
        flags["validation"] = None  # a user file has no implicit validation split
    config = build_config(flags, args.config)
    if args.no_validation:
        config.validation = None
    _warn_unsafe_loading(args)
    try:
        train(
            config,
            show_progress=not args.quiet,
            resume=args.resume,
            overwrite=args.overwrite,
            allow_pickle=args.allow_pickle,
            trust_remote_code=args.trust_remote_code,
        )
    except TrainingInterrupted as stop:
        import shlex

        argv = [a for a in getattr(args, "argv", None) or sys.argv[1:] if a != "--overwrite"]
        command = shlex.join(["mcqtune", *argv, *([] if "--resume" in argv else ["--resume"])])
        print(f"\n{stop}\nresume with:\n    {command}", file=sys.stderr)
        return 130
    return 0


def _warn_unsafe_loading(args: argparse.Namespace) -> None:
    if args.allow_pickle:
        print(
            "warning: --allow-pickle: pickled weights run code when loaded; use only trusted files",
            file=sys.stderr,
        )
    if args.trust_remote_code:
        print(
            "warning: --trust-remote-code: the model's own Python code will run on this machine",
            file=sys.stderr,
        )


def _is_bundled(spec: str) -> bool:
    from mcqtune.data import BUNDLED_DATASETS

    return spec.lower().replace("-", "_") in BUNDLED_DATASETS


# ---------------------------------------------------------------- eval / predict
def _predictor(args: argparse.Namespace):
    """The base (--model, else the adapter's own) with --adapter attached; returns it and that name."""
    from mcqtune.inference import Predictor

    _warn_unsafe_loading(args)
    name = (Path(args.adapter).name or "adapter") if args.adapter else None
    predictor = Predictor.open(
        args.model,
        {name: args.adapter} if name else None,
        precision=args.precision,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
    )
    return predictor, name


def _check_eval_args(args: argparse.Namespace):
    """Numbers, output paths and a given prior are checked before any model is loaded; returns the
    ``--prior`` read (None without one)."""
    from mcqtune.config import ConfigError
    from mcqtune.evaluation.analysis import LetterPrior
    from mcqtune.preflight import check_output_dir, check_output_file

    for flag in ("limit", "batch_size", "calibration_size"):
        value = getattr(args, flag, None)
        if value is not None and value <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    output = getattr(args, "output", None)
    if output:
        check_output_file(output)
        if Path(output).exists() and not args.overwrite:
            raise FileExistsError(f"--output {output} exists; pass --overwrite to replace it")
    if args.save_prior:
        check_output_file(args.save_prior, "--save-prior")
    if getattr(args, "report", None):
        check_output_dir(args.report, "--report")
    return LetterPrior.load(args.prior) if args.prior else None


def _analyses(args: argparse.Namespace, predictor, adapter: str | None, examples, prior, batch_size=16):
    """Score (under option permutations when asked) and debias (when asked): see evaluation.analysis."""
    from mcqtune.data import load_examples, resolve_data
    from mcqtune.evaluation.analysis import parse_permutations

    permutations = getattr(args, "permutations", None)
    calibration_examples = None
    calibration_source = None
    if args.debias and prior is None and args.calibration_data:
        path = resolve_data(args.calibration_data, "train")
        calibration_examples = load_examples(path, args.format, require_answer=False).examples
        calibration_source = str(path)
    result = predictor.score(
        examples,
        adapter,
        None if args.scoring == "auto" else args.scoring,
        batch_size=batch_size,
        permutations=parse_permutations(permutations) if permutations else None,
        debias_prior=args.debias,
        prior=prior,
        calibration_examples=calibration_examples,
        calibration_size=args.calibration_size,
        calibration_source=calibration_source,
        seed=args.seed,
    )
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.save_prior and result.prior is not None:
        result.prior.save(args.save_prior)
        print(f"wrote letter prior {args.save_prior}", file=sys.stderr)
    return result


def _data_label(spec: str, split: str, path: Path) -> str:
    """How printouts name the data: a bundled set by its name and split, a file by its path."""
    if _is_bundled(spec) and not Path(spec).is_file():
        return f"{spec.lower().replace('-', '_')} ({split})"
    return str(path)


def cmd_eval(args: argparse.Namespace) -> int:
    from mcqtune.atomic import atomic_write_json
    from mcqtune.data import load_examples, resolve_data
    from mcqtune.evaluation.analysis import (
        format_confusion,
        format_debias_summary,
        format_permutation_summary,
    )
    from mcqtune.evaluation.evaluate import compute_metrics, format_metrics

    prior = _check_eval_args(args)
    path = resolve_data(args.data, "validation")
    data = load_examples(path, args.format, on_bad_rows=args.on_bad_rows, limit=args.limit)
    predictor, adapter = _predictor(args)
    result = _analyses(args, predictor, adapter, data.examples, prior, batch_size=args.batch_size)
    metrics = compute_metrics(result.scored)
    metrics["data"] = str(path)
    metrics["model"] = predictor.model_id
    metrics["adapter"] = str(args.adapter) if args.adapter else None
    if data.skipped:
        metrics["bad_rows_skipped"] = data.skipped
    metrics.update(result.sections)
    source = f"adapter {args.adapter}" if args.adapter else f"zero-shot {predictor.model_id}"
    title = f"{_data_label(args.data, 'validation', path)}: {source}"
    print(format_metrics(metrics, title))
    if metrics.get("letter_bias", {}).get("n"):
        print(format_confusion(metrics["letter_bias"]))
    if "permutations" in metrics:
        print(format_permutation_summary(metrics["permutations"]))
    if "debias" in metrics:
        print(format_debias_summary(metrics["debias"]))
    if args.output:
        atomic_write_json(args.output, metrics)
        print(f"wrote {args.output}")
    if args.report:
        from mcqtune.evaluation.report import write_report

        written = write_report(args.report, metrics, title=f"{title} ({metrics['scoring']} scoring)")
        print(f"wrote report {args.report} ({', '.join(p.name for p in written)})")
    return 0


def _predict_examples(args: argparse.Namespace):
    from mcqtune.data import DataError, load_examples
    from mcqtune.inference import typed_question

    if args.data:
        return load_examples(args.data, args.format, require_answer=False).examples
    if args.question is None or not args.choice or len(args.choice) < 2:
        raise DataError("predict needs --data FILE, or --question and at least two --choice")
    return [typed_question(args.question, args.choice)]


def cmd_predict(args: argparse.Namespace) -> int:
    import json
    import textwrap

    from mcqtune.data import LETTERS, DataError
    from mcqtune.inference import predictions

    examples = _predict_examples(args)
    debiasing = args.debias or args.prior
    if debiasing and not (args.prior or args.calibration_data or args.data):
        raise DataError(
            "predict --debias needs a letter prior: --prior FILE (from eval --save-prior), "
            "--calibration-data FILE, or --data with several questions"
        )
    prior = _check_eval_args(args)
    predictor, adapter = _predictor(args)
    result = _analyses(args, predictor, adapter, examples, prior)
    records = predictions(result)
    if args.json:
        for record in records:
            print(json.dumps(record.to_dict()))
        return 0
    source = f"adapter {args.adapter}" if args.adapter else f"zero-shot {predictor.model_id}"
    print(f"{source}, {result.scored.scoring} scoring{', debiased' if result.debiased is not None else ''}")
    for record in records:
        choices = record.example.choices
        chosen = f"{record.letter}. {choices[record.index]}"
        if args.data:
            question = textwrap.shorten(record.example.question, 60, placeholder="...")
            verdict = "" if record.correct is None else "  right" if record.correct else "  wrong"
            gold = f" (answer {record.example.answer_letter})" if record.correct is False else ""
            print(f"{record.example.id}: {question} -> {chosen}{verdict}{gold}")
            continue
        note = f"  (without debiasing {LETTERS[record.raw_index]})" if record.debiased else ""
        print(f"{record.example.question}\nanswer: {chosen}{note}")
        for i, (choice, probability) in enumerate(zip(choices, record.probabilities, strict=True)):
            mark = "*" if i == record.index else " "
            print(f"  {mark} {LETTERS[i]}. {probability * 100:5.1f}%  {choice}")
    judged = [r.correct for r in records if r.correct is not None]
    if args.data and judged:
        print(f"{sum(judged)} of {len(judged)} questions with a known answer right")
    return 0


# ---------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from mcqtune.export import describe, export_run
    from mcqtune.preflight import check_adapter_dir, check_output_dir

    check_adapter_dir(args.adapter)
    check_output_dir(args.output)
    if Path(args.output).exists() and any(Path(args.output).iterdir()) and not args.overwrite:
        raise FileExistsError(f"{args.output} exists and is not empty; pass --overwrite to replace it")
    result = export_run(
        args.adapter,
        args.output,
        dtype=args.dtype,
        check_questions=args.check_questions,
        tolerance=args.tolerance,
    )
    print(describe(result))
    return 0


# ---------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from mcqtune.demo import run_demo

    return run_demo(Path(args.output), quick=args.quick)


# ---------------------------------------------------------------- compare
def _compare_permutations(flag: str | None, objective: str | None) -> str | None:
    """Letter scoring depends on option order, so a letter compare reports cyclic permutations unless
    ``--permutations none``; cloze scoring is order-free (its permutation accuracy is its accuracy)."""
    if flag is not None:
        return None if flag.lower() == "none" else flag
    return "cyclic" if objective == "letter" else None


def cmd_compare(args: argparse.Namespace) -> int:
    import shlex

    from mcqtune.compare.runner import CompareSettings, parse_methods, run_compare

    overrides = {
        key: getattr(args, key)
        for key in ("max_steps", "batch_size", "seed", "eval_steps", "eval_limit", "final_eval_limit")
    } | {"train_limit": args.train_limit}
    settings = CompareSettings(
        output=Path(args.output),
        methods=parse_methods(args.methods),
        data=args.data,
        validation=args.validation,
        objective=args.objective,
        model=args.model,
        config_file=args.config,
        quick=args.quick,
        resume=args.resume,
        overrides=overrides,
        precision=args.precision,
        method_timeout=args.method_timeout,
        permutations=_compare_permutations(args.permutations, args.objective),
        echo=not args.quiet,
        command=shlex.join(["mcqtune", *args.argv]),
    )
    result = run_compare(settings)
    failed = [r["method"] for r in result.rows if r["status"] != "ok"]
    if failed:
        print(f"failed (recorded in the table): {', '.join(failed)}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    """Load the base and every --adapter, then answer HTTP requests until Ctrl-C (docs/SERVING.md)."""
    from mcqtune.config import ConfigError
    from mcqtune.serving import LOOPBACK_HOSTS

    api_key = None
    if args.api_key_file:
        api_key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
        if not api_key:
            raise ConfigError(f"--api-key-file {args.api_key_file}: the file is empty")
    elif args.host not in LOOPBACK_HOSTS:
        raise ConfigError(
            f"--host {args.host} is reachable from other machines: pass --api-key-file FILE "
            "(every request but /healthz must then carry the key)"
        )
    for flag in ("port", "max_loaded", "max_batch", "max_body_bytes"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be a positive integer")
    import uvicorn

    from mcqtune.evaluation.analysis import LetterPrior
    from mcqtune.serving.app import ServeSettings, create_app
    from mcqtune.serving.engine import open_engine
    from mcqtune.serving.registry import ArtifactRegistry, parse_named_paths

    named = parse_named_paths(args.adapter)
    priors = {name: LetterPrior.load(path) for name, path in parse_named_paths(args.prior, "--prior").items()}
    max_batch = 1 if args.no_batching else args.max_batch
    engine = open_engine(args.model, args.precision, batch_size=max_batch)
    registry = ArtifactRegistry(
        engine, named, Path(args.adapter_dir) if args.adapter_dir else None, args.max_loaded
    )
    registry.load_named()
    settings = ServeSettings(
        window_ms=0.0 if args.no_batching else args.batch_window_ms,
        max_batch=max_batch,
        max_body_bytes=args.max_body_bytes,
        api_key=api_key,
        priors=priors,
    )
    app = create_app(registry, settings)
    names = ", ".join(registry.available()) or "none (zero-shot only)"
    print(
        f"serving {engine.base_id} with artifacts: {names} on http://{args.host}:{args.port}/",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


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
    check.add_argument("--split", default="train", help="split of a bundled dataset: train|validation")
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
    tr.add_argument(
        "--shuffle-options",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="permute each training example's options every epoch (answer letter remapped) so the "
        "model cannot learn the data's letter skew; letter objective only (default: on; docs/EVALUATION.md)",
    )
    tr.add_argument("--max-length", type=int, help="max tokens per sequence (question is shortened first)")
    tr.add_argument("--train-on-prompt", action="store_true", help="letter objective: loss on prompt too")
    tr.add_argument("--option", action="append", metavar="KEY=VALUE", help="method option, e.g. r=8")
    group = tr.add_argument_group("method options", "shortcuts for --option (docs/METHODS.md)")
    for flag, _, kwargs in METHOD_OPTION_FLAGS:
        group.add_argument(flag, **kwargs)
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.add_argument(
        "--save-steps", type=int, help="checkpoint every N steps (default 20) for --resume; Ctrl-C saves too"
    )
    tr.add_argument("--keep-checkpoints", type=int, help="checkpoints kept while training (default 2)")
    tr.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint in --output (re-running the same command does too)",
    )
    tr.add_argument(
        "--overwrite", action="store_true", help="replace a finished or different run in --output"
    )
    tr.add_argument("--allow-pickle", action="store_true", help="allow loading pickled .bin weights")
    tr.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code")
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
        p.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code")

    def add_debias_args(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("debiasing (content-free letter prior, see docs/EVALUATION.md)")
        g.add_argument(
            "--debias",
            action="store_true",
            help="estimate the model's prior over answer letters from cyclically permuted scoring of a "
            "calibration sample (no labels used) and remove it from the option scores",
        )
        g.add_argument(
            "--calibration-data",
            metavar="FILE",
            help="questions to estimate the prior on (bundled name: its train split); "
            "default: a sample of the evaluated/predicted questions",
        )
        g.add_argument(
            "--calibration-size", type=int, default=100, help="calibration questions (default 100)"
        )
        g.add_argument("--prior", metavar="FILE", help="use a saved letter prior (implies --debias)")
        g.add_argument("--save-prior", metavar="FILE", help="write the estimated prior as JSON")
        g.add_argument("--seed", type=int, default=0, help="seed for samples and random orders")

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
    ev.add_argument("--output", help="write metrics JSON here (an existing file needs --overwrite)")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    ev.add_argument(
        "--permutations",
        metavar="cyclic|all|K",
        help="also score every question under option orders: cyclic rotations, all orders, or the "
        "original plus K-1 random ones; reports order-averaged and circular accuracy",
    )
    ev.add_argument("--report", metavar="DIR", help="write metrics.json, summary.md and PNG charts here")
    add_debias_args(ev)
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
    add_debias_args(pr)
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser(
        "export",
        help="merge a LoRA/QLoRA run (or save a full/subset run) as a plain Hugging Face model dir",
        description="Write a plain Hugging Face model directory (safetensors + tokenizer) that loads "
        "without peft, bitsandbytes or mcqtune. LoRA is merged into the base; QLoRA is dequantized to fp32 "
        "and merged. The merged model's option scores are checked against the run's on a few validation "
        "questions before anything is written.",
    )
    ex.add_argument("--adapter", required=True, help="a mcqtune run directory (from train)")
    ex.add_argument("--output", required=True, help="the model directory to write")
    ex.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="weights dtype (default fp32)")
    ex.add_argument(
        "--check-questions", type=int, default=8, help="validation questions to compare on (0: no check)"
    )
    ex.add_argument("--tolerance", type=float, help="largest allowed option-score difference (nats)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    ex.set_defaults(func=cmd_export)

    demo = sub.add_parser(
        "demo",
        help="zero-shot vs LoRA on bundled MedMCQA and ARC-Easy, one table",
        description="The end-to-end demo `make demo` runs.",
    )
    demo.add_argument("--output", default="runs/demo")
    demo.add_argument("--quick", action="store_true", help="tiny budget, for a smoke test")
    demo.set_defaults(func=cmd_demo)

    cmp = sub.add_parser(
        "compare",
        help="train every method under one budget; table, plots and an HTML report",
        description="Train each method (and evaluate zero-shot) with the same data, seed, examples seen "
        "and evaluation set, each in its own process, then write results.json/.csv, PNG plots, "
        "report.html and report.md into --output. A failed method is recorded, not fatal. Default "
        "budget: <= 60 min on 2 CPU cores; --quick: <= 10 min.",
    )
    cmp.add_argument(
        "--methods",
        help="comma-separated methods (default: all registered: full,subset,adapter,prefix,lora,qlora); "
        "a zero-shot row is always added",
    )
    cmp.add_argument("--output", required=True, help="directory for results, reports and runs/<method>/")
    cmp.add_argument("--config", help="YAML with TrainConfig keys applied to every method")
    cmp.add_argument(
        "--data", default="arc_easy", help="training data, bundled name or file (default: arc_easy)"
    )
    cmp.add_argument("--validation", help="evaluation data (default: the bundled validation split)")
    cmp.add_argument(
        "--objective",
        default="ranking",
        choices=("auto", "letter", "ranking"),
        help="training objective for every method (default: ranking)",
    )
    cmp.add_argument("--model", help="base model (default: bundled SmolLM2-135M)")
    cmp.add_argument("--quick", action="store_true", help="small budget (<= 10 min): checks the pipeline")
    cmp.add_argument("--resume", action="store_true", help="skip methods already finished in --output")
    cmp.add_argument("--max-steps", type=int, help="optimizer steps per method (default 150; quick 20)")
    cmp.add_argument("--batch-size", type=int, help="questions per step (default 4)")
    cmp.add_argument("--seed", type=int, help="seed shared by every method (default 42)")
    cmp.add_argument("--eval-steps", type=int, help="learning-curve point every N steps (default 30)")
    cmp.add_argument("--eval-limit", type=int, help="validation questions per curve point (default 100)")
    cmp.add_argument(
        "--final-eval-limit", type=int, help="questions in the final evaluation (default all; quick 100)"
    )
    cmp.add_argument("--train-limit", type=int, help="use only the first N training rows")
    cmp.add_argument("--precision", choices=("auto", "bf16", "fp32"))
    cmp.add_argument(
        "--permutations",
        metavar="cyclic|all|K",
        help="also report permutation-averaged accuracy on the final evaluation set (costs K x its "
        "time; default: cyclic with --objective letter, none otherwise: cloze ignores option order)",
    )
    cmp.add_argument(
        "--method-timeout", type=float, metavar="SECONDS", help="stop a method after this long (failure)"
    )
    cmp.add_argument("--quiet", action="store_true", help="do not echo each method's log lines")
    cmp.set_defaults(func=cmd_compare)

    from mcqtune import serving

    srv = sub.add_parser(
        "serve",
        help="HTTP API and web page: one base model, many trained artifacts chosen per request",
        description="Serve answers over HTTP (docs/SERVING.md). Binds 127.0.0.1 unless --host says "
        "otherwise; any other address needs --api-key-file. Without --adapter it serves the base zero-shot.",
    )
    srv.add_argument("--model", help="base model (default: bundled SmolLM2); every artifact must match it")
    srv.add_argument(
        "--adapter", action="append", metavar="NAME=DIR", help="a run directory served as NAME (repeat)"
    )
    srv.add_argument(
        "--adapter-dir", metavar="DIR", help="every run directory directly under DIR is loadable by its name"
    )
    srv.add_argument("--host", default=serving.DEFAULT_HOST, help="address to bind (default %(default)s)")
    srv.add_argument("--api-key-file", metavar="FILE", help="a file holding the API key requests must carry")
    srv.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    srv.add_argument("--no-batching", action="store_true", help="one question per forward pass")
    for flag, kind, default, text in (
        ("--port", int, serving.DEFAULT_PORT, "port"),
        ("--max-loaded", int, serving.DEFAULT_MAX_LOADED, "--adapter-dir artifacts held at once (LRU)"),
        ("--batch-window-ms", float, serving.DEFAULT_WINDOW_MS, "how long a batch waits for more questions"),
        ("--max-batch", int, serving.DEFAULT_MAX_BATCH, "questions per forward pass at most"),
        ("--max-body-bytes", int, serving.DEFAULT_MAX_BODY_BYTES, "larger request bodies get 413"),
    ):
        srv.add_argument(flag, type=kind, default=default, help=f"{text} (default %(default)s)")
    srv.add_argument(
        "--prior",
        action="append",
        metavar="NAME=FILE",
        help="letter prior (eval --save-prior) for artifact NAME or zero-shot; enables debias: true",
    )
    srv.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
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
