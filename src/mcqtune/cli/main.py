"""The ``mcqtune`` command line: data check, train, eval, predict, export, demo, compare, estimate.

User errors (bad data, bad config, missing model, wrong artifact) print one clear line and exit 2;
tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcqtune.cli.backend_args import add_backend_args, execution_from_args
from mcqtune.cli.data_args import add_data_args, field_config_from_args, field_map_from_args
from mcqtune.quiet import quiet_libraries

EXIT_USER_ERROR = 2


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
    report = check_file(
        resolve_data(args.file, args.split),
        args.format,
        field_map=field_map_from_args(args),
        token_length=token_length,
    )
    print(report.format_text())
    return 1 if report.problems else 0


# ---------------------------------------------------------------- train
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


# Method options with their own flags (every option also works as --option KEY=VALUE and in YAML):
# flag, option key, what it does. Which methods read it, its type and its default come from
# configs/methods/*.yaml; a flag a method does not read is an error naming the method.
METHOD_OPTION_FLAGS: list[tuple[str, str, str]] = [
    ("--top-k", "top_k", "train the last K decoder layers"),
    ("--train-head", "train_head", "train the LM head (tied to the input embedding)"),
    ("--lora-r", "r", "rank"),
    ("--lora-alpha", "alpha", "alpha"),
    ("--lora-dropout", "dropout", "dropout"),
    ("--target-modules", "target_modules", "all-linear, attention, mlp or a comma-separated list"),
    ("--rslora", "use_rslora", "rsLoRA scaling"),
    ("--dora", "use_dora", "DoRA"),
    ("--quant-type", "quant_type", "4-bit type: nf4 or fp4"),
    ("--double-quant", "double_quant", "quantize the scales too"),
    ("--compute-dtype", "compute_dtype", "matmul dtype: bf16, fp16 or fp32"),
    (
        "--optimizer",
        "optimizer",
        "paged_adamw_32bit, paged_adamw_8bit or adamw (paged ones need CUDA; CPU uses AdamW)",
    ),
    ("--adapter-config", "config", "where adapters sit: pfeiffer or houlsby"),
    ("--bottleneck", "bottleneck", "bottleneck width"),
    ("--non-linearity", "non_linearity", "relu, swish or gelu"),
    ("--num-virtual-tokens", "num_virtual_tokens", "prefix length"),
    ("--prefix-projection", "prefix_projection", "learn the prefix through an MLP"),
]


def _option_dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_method_option_flags(group: argparse._ArgumentGroup) -> None:
    """One flag per METHOD_OPTION_FLAGS row; help, type and default read from the methods' YAML."""
    from mcqtune.config import format_value, method_names_with_defaults

    defaults = method_names_with_defaults()
    for flag, key, text in METHOD_OPTION_FLAGS:
        readers = {m: options[key] for m, options in defaults.items() if key in options}
        values = set(map(format_value, readers.values()))
        shown = (
            values.pop()
            if len(values) == 1
            else ", ".join(f"{m} {format_value(v)}" for m, v in readers.items())
        )
        kinds = {type(v) for v in readers.values()}
        # A list of names is typed as "a,b,c"; numbers keep the YAML's type (an int default: int).
        kind = next(
            (k for k in (bool, int, float) if kinds <= {k} or (k is float and kinds <= {int, float})), str
        )
        kwargs: dict[str, Any] = (
            {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": kind}
        )
        group.add_argument(
            flag, dest=_option_dest(flag), help=f"{'/'.join(readers)}: {text} (default: {shown})", **kwargs
        )


def method_option_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The method options given as their own flags (None: not given)."""
    options = {}
    for flag, key, _ in METHOD_OPTION_FLAGS:
        value = getattr(args, _option_dest(flag), None)
        if value is not None:
            options[key] = value
    return options


def config_flags(args: argparse.Namespace, keys: tuple[str, ...]) -> dict[str, Any]:
    """The TrainConfig keys given on the command line (None: not given)."""
    return {key: getattr(args, key) for key in keys}


def _launch_processes(args: argparse.Namespace) -> int | None:
    """``--num-processes N`` outside a launcher: start N processes of this same command and return
    their exit code (None: run here, in this process, which may be one of a launch's processes)."""
    from mcqtune.config import ConfigError
    from mcqtune.distributed import join_launch, launched_processes, relaunch

    wanted, launched = args.num_processes, launched_processes()
    if wanted is not None and wanted < 1:
        raise ConfigError(f"--num-processes must be a positive integer, got {wanted}")
    if wanted is None or wanted == launched:
        join_launch()
        return None
    if launched > 1:
        raise ConfigError(f"--num-processes {wanted}, but the launcher started {launched} processes")
    argv = getattr(args, "argv", None) or sys.argv[1:]
    return relaunch(wanted, _without_option(argv, "--num-processes"))


def _without_option(argv: list[str], flag: str) -> list[str]:
    """``argv`` less ``flag VALUE`` and ``flag=VALUE``."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(f"{flag}="):
            kept.append(arg)
    return kept


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from mcqtune.config import build_config, flag_keys
    from mcqtune.training.recipe import TrainingInterrupted, train

    launched = _launch_processes(args)
    if launched is not None:
        return launched

    flags = config_flags(args, flag_keys()) | field_config_from_args(args)
    options = {**method_option_flags(args), **parse_option_pairs(args.option)}
    if options:
        flags["method_options"] = options
    if args.train_on_prompt:
        flags["prompt"] = {"train_on_prompt": True}
    if args.max_length is not None:
        flags["prompt"] = {**flags.get("prompt", {}), "max_length": args.max_length}
    config = build_config(flags, args.config)
    if args.no_validation:
        config = dataclasses.replace(config, validation=None)
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

        from mcqtune.distributed import is_main_process, launched_processes

        argv = [a for a in getattr(args, "argv", None) or sys.argv[1:] if a != "--overwrite"]
        argv += [] if "--resume" in argv else ["--resume"]
        if launched_processes() > 1 and args.num_processes is None:  # started by a launcher
            argv += ["--num-processes", str(launched_processes())]
        if is_main_process():
            print(f"\n{stop}\nresume with:\n    {shlex.join(['mcqtune', *argv])}", file=sys.stderr)
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
    from mcqtune.evaluation.debias import LetterPrior
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
        calibration_examples = load_examples(
            path, args.format, field_map=field_map_from_args(args), require_answer=False
        ).examples
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
    from mcqtune.distributed import is_main_process

    if not is_main_process():  # the main process warns and writes for the launch
        return result
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.save_prior and result.prior is not None:
        result.prior.save(args.save_prior)
        print(f"wrote letter prior {args.save_prior}", file=sys.stderr)
    return result


def _data_label(spec: str, split: str, path: Path) -> str:
    """How printouts name the data: a bundled set by its name and split, a file by its path."""
    from mcqtune.data import bundled_key

    key = bundled_key(spec)
    if key and not Path(spec).is_file():
        return f"{key} ({split})"
    return str(path)


def cmd_eval(args: argparse.Namespace) -> int:
    from mcqtune.atomic import atomic_write_json
    from mcqtune.data import load_examples, resolve_data
    from mcqtune.distributed import is_main_process
    from mcqtune.evaluation.format import (
        format_confusion,
        format_debias_summary,
        format_metrics,
        format_permutation_summary,
    )
    from mcqtune.evaluation.metrics import compute_metrics
    from mcqtune.progress import task

    launched = _launch_processes(args)
    if launched is not None:
        return launched
    prior = _check_eval_args(args)
    path = resolve_data(args.data, "validation")
    data = load_examples(
        path, args.format, on_bad_rows=args.on_bad_rows, field_map=field_map_from_args(args), limit=args.limit
    )
    predictor, adapter = _predictor(args)
    with task(f"eval ({args.data})" if is_main_process() else None):
        result = _analyses(args, predictor, adapter, data.examples, prior, batch_size=args.batch_size)
    if not is_main_process():  # every process scored its share; the main one reports and writes
        return 0
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
        return load_examples(
            args.data, args.format, field_map=field_map_from_args(args), require_answer=False
        ).examples
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

    from mcqtune.compare.plan import CompareSettings, parse_budget, parse_methods
    from mcqtune.compare.runner import run_compare
    from mcqtune.config import TAG_COMPARE, keys_tagged

    settings = CompareSettings(
        output=Path(args.output),
        methods=parse_methods(args.methods),
        config_file=args.config,
        quick=args.quick,
        resume=args.resume,
        overrides=config_flags(args, keys_tagged(TAG_COMPARE)),
        data_fields=field_config_from_args(args),
        method_timeout=args.method_timeout,
        permutations=_compare_permutations(args.permutations, args.objective),
        tune=args.tune,
        dev_size=args.dev_size,
        seeds=args.seeds,
        eval_data=args.eval_data or [],
        time_budget=parse_budget(args.budget),
        echo=not args.quiet,
        command=shlex.join(["mcqtune", *args.argv]),
        execution=execution_from_args(args),
    )
    result = run_compare(settings)
    failed = [r["method"] for r in result.rows if r["status"] != "ok"]
    if failed:
        print(f"failed (recorded in the table): {', '.join(failed)}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- estimate
ESTIMATE_FLAGS = (
    "batch_size",
    "max_length",
    "precision",
    "objective",
    "num_processes",
    "sharding",
    "gradient_checkpointing",
)


def cmd_estimate(args: argparse.Namespace) -> int:
    import json

    from mcqtune.estimate import estimate_memory

    settings = {name: getattr(args, name) for name in ESTIMATE_FLAGS}
    settings["gradient_checkpointing"] = bool(args.gradient_checkpointing)  # None: not given
    estimate = estimate_memory(args.model, args.method, options=parse_option_pairs(args.option), **settings)
    print(json.dumps(estimate.to_dict(), indent=2) if args.json else estimate.format_text())
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

    from mcqtune.evaluation.debias import LetterPrior
    from mcqtune.serving.app import ZERO_SHOT, ServeSettings, create_app
    from mcqtune.serving.engine import open_engine
    from mcqtune.serving.registry import ArtifactRegistry, parse_named_paths

    named = parse_named_paths(args.adapter)
    prior_paths = parse_named_paths(args.prior, "--prior")
    for name in prior_paths:
        in_dir = args.adapter_dir and (Path(args.adapter_dir) / name).is_dir()
        if name != ZERO_SHOT and name not in named and not in_dir:
            known = ", ".join([ZERO_SHOT, *named]) + (
                f", or a run directory under {args.adapter_dir}" if args.adapter_dir else ""
            )
            raise ConfigError(
                f"--prior {name}=...: no artifact named '{name}' is served; the names are {known}"
            )
    priors = {name: LetterPrior.load(path) for name, path in prior_paths.items()}
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
class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default or "(required)": a newcomer should not have to guess."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default == argparse.SUPPRESS:
            return text
        if "(default" in text or "(required" in text:
            return text
        if action.required:
            return text if "(required" in text else f"{text} (required)"
        if isinstance(action.default, bool):
            return f"{text} (default: {'on' if action.default else 'off'})"
        return f"{text} (default: {'%(default)s' if action.default is not None else 'none'})"


class Parser(argparse.ArgumentParser):
    """A usage mistake is one line and a pointer to ``--help``, not the whole usage first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: error: {message}\nsee: {self.prog} --help")


class UsageError(Exception):
    """A command line argparse cannot parse; ``main`` prints it and returns EXIT_USER_ERROR."""


class Listed:
    """Names joined for a help text only when the help is shown, so building the parser does not
    import every method plug-in; the values are checked by the config, with its own message."""

    def __init__(self, load: Callable[[], tuple[str, ...]]):
        self.load = load

    def __str__(self) -> str:
        return ", ".join(self.load())


def add_config_flags(
    parser: argparse.ArgumentParser,
    keys: tuple[str, ...],
    defaults: dict[str, Any] | None = None,
    quick: dict[str, Any] | None = None,
    names: dict[str, str] | None = None,
) -> None:
    """One flag per TrainConfig key, typed, with its choices and help from the field. The argparse
    default is None ("not given", so --config and the method's YAML still apply); the help shows the
    value actually used: ``defaults`` (compare's budget) or the field's own, and ``quick``'s if different."""
    from mcqtune.config import CONFIG_FIELDS, describe_default, field_type, flag_name, format_value

    defaults, quick, names = defaults or {}, quick or {}, names or {}
    for key in keys:
        f = CONFIG_FIELDS[key]
        kind = field_type(key)
        kwargs: dict[str, Any] = {"dest": key, "default": None}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
        flag = names.get(key, flag_name(key))
        text = f.metadata["help"]
        choices = f.metadata["choices"]
        if callable(choices):  # e.g. the registered methods: listed in the help, checked by the config
            text += "; one of: %(listed)s"
        elif choices is not None:
            kwargs["choices"] = choices
        shown = describe_default(key, defaults.get(key, f.default))
        if key in quick and quick[key] != defaults.get(key, f.default):
            shown += f"; --quick: {format_value(quick[key])}"
        action = parser.add_argument(flag, help=f"{text} ({shown})", **kwargs)
        action.listed = Listed(choices) if callable(choices) else None  # type: ignore[attr-defined]


def add_num_processes(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--num-processes",
        type=int,
        metavar="N",
        help=f"{what}: starts N processes with torchrun (gloo on CPU, NCCL on GPUs); under torchrun or "
        "accelerate launch, the launcher's count (default: one, or the launcher's)",
    )


def build_parser() -> argparse.ArgumentParser:
    from mcqtune import __version__
    from mcqtune.config import (
        OBJECTIVES,
        ON_BAD_ROWS,
        PRECISIONS,
        SCORINGS,
        TAG_COMPARE,
        TrainConfig,
        data_formats,
        flag_keys,
        keys_tagged,
    )
    from mcqtune.prompt import PromptConfig

    parser = Parser(
        prog="mcqtune",
        description="Fine-tune causal LMs for multiple-choice QA with PEFT methods; evaluate them honestly.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    formats = data_formats()

    data = sub.add_parser("data", help="inspect and validate MCQA data files")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser(
        "check",
        help="rows, options per question, answer letters, majority share, token lengths, all problems",
        description="Validate a data file and summarise it. Exits 1 if any row has a problem.",
    )
    check.add_argument("file", help="data file, or a bundled name (medmcqa, arc_easy)")
    check.add_argument(
        "--split", default="train", choices=("train", "validation"), help="split of a bundled dataset"
    )
    check.add_argument("--format", default="auto", choices=formats, help="data format")
    check.add_argument(
        "--model", default=None, help="tokenizer for token-length percentiles (default: bundled)"
    )
    check.add_argument(
        "--no-tokens", action="store_true", help="skip token-length percentiles (no model load)"
    )
    add_data_args(check)
    check.set_defaults(func=cmd_data_check)

    tr = sub.add_parser(
        "train",
        help="fine-tune with one method and save its artifact",
        description="Train a method on MCQA data. Precedence: method defaults < --config YAML < flags.",
    )
    tr.add_argument("--config", help="YAML file with any TrainConfig keys (see configs/)")
    add_config_flags(tr, flag_keys())
    tr.add_argument("--no-validation", action="store_true", help="train without validation")
    tr.add_argument(
        "--max-length",
        type=int,
        help=f"max tokens per sequence; the question is shortened first (default: {PromptConfig.max_length})",
    )
    tr.add_argument("--train-on-prompt", action="store_true", help="letter objective: loss on prompt too")
    tr.add_argument("--option", action="append", metavar="KEY=VALUE", help="method option, e.g. r=8")
    add_method_option_flags(
        tr.add_argument_group("method options", "shortcuts for --option (docs/METHODS.md)")
    )
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
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
    add_num_processes(tr, "data-parallel training processes; --batch-size is per process")
    add_data_args(tr)
    tr.set_defaults(func=cmd_train)

    def add_model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="base model (default: the adapter's base, else bundled SmolLM2)")
        p.add_argument(
            "--adapter", help="a mcqtune run directory (from train) (default: none, the base model alone)"
        )
        p.add_argument(
            "--scoring",
            default="auto",
            choices=SCORINGS,
            help="auto: the adapter's formulation; cloze for small base models, else letter",
        )
        p.add_argument("--format", default="auto", choices=formats, help="data format")
        p.add_argument(
            "--precision", default="auto", choices=PRECISIONS, help="auto: bf16 autocast where supported"
        )
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
            help="questions to estimate the prior on (bundled name: its train split) "
            "(default: a sample of the evaluated/predicted questions)",
        )
        g.add_argument("--calibration-size", type=int, default=100, help="calibration questions")
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
    ev.add_argument("--limit", type=int, help="evaluate only the first N rows (default: all)")
    ev.add_argument("--batch-size", type=int, default=16, help="questions per scoring batch")
    ev.add_argument(
        "--on-bad-rows",
        default="error",
        choices=ON_BAD_ROWS,
        help="error: stop at the first bad row; skip: drop and count bad rows",
    )
    ev.add_argument(
        "--output", help="write metrics JSON here; an existing file needs --overwrite (default: not written)"
    )
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    ev.add_argument(
        "--permutations",
        metavar="cyclic|all|K",
        help="also score every question under option orders: cyclic rotations, all orders, or the "
        "original plus K-1 random ones; reports order-averaged and circular accuracy",
    )
    ev.add_argument("--report", metavar="DIR", help="write metrics.json, summary.md and PNG charts here")
    add_num_processes(ev, "processes that each score a share of the questions")
    add_debias_args(ev)
    add_data_args(ev)
    ev.set_defaults(func=cmd_eval)

    pr = sub.add_parser(
        "predict",
        help="answer questions and show every option's probability",
        description="Predict for one question (--question/--choice) or a JSONL file (--data).",
    )
    add_model_args(pr)
    pr.add_argument("--question", help="one question to answer (with two or more --choice)")
    pr.add_argument("--choice", action="append", help="an option (repeat, in order)")
    pr.add_argument("--data", help="file of questions (answers optional)")
    pr.add_argument("--json", action="store_true", help="one JSON object per question")
    add_debias_args(pr)
    add_data_args(pr)
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
    ex.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="weights dtype")
    ex.add_argument(
        "--check-questions", type=int, default=8, help="validation questions to compare on (0: no check)"
    )
    ex.add_argument(
        "--tolerance", type=float, help="largest allowed option-score difference, nats (default: per method)"
    )
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    ex.set_defaults(func=cmd_export)

    demo = sub.add_parser(
        "demo",
        help="zero-shot vs LoRA on bundled MedMCQA and ARC-Easy, one table",
        description="The end-to-end demo `make demo` runs.",
    )
    demo.add_argument("--output", default="runs/demo", help="directory for the runs and the table")
    demo.add_argument("--quick", action="store_true", help="tiny budget, for a smoke test")
    demo.set_defaults(func=cmd_demo)

    from mcqtune.compare.plan import DEFAULT_BUDGET, QUICK_BUDGET, TUNE_CHOICES
    from mcqtune.compare.trials import DEV_SIZE, QUICK_DEV_SIZE

    cmp = sub.add_parser(
        "compare",
        help="train every method under one budget; table, plots and an HTML report",
        description="Train each method (and evaluate zero-shot) with the same data, seed, examples seen "
        "and evaluation set, each in its own process, then write results.json/.csv, PNG plots, "
        "report.html and report.md into --output. A failed method is recorded, not fatal. Default "
        "budget: <= 60 min on 2 CPU cores; --quick: <= 10 min. Precedence: budget < --config < flags.",
    )
    cmp.add_argument(
        "--methods",
        help="comma-separated methods; a zero-shot row is always added "
        "(default: every registered method, in the methods' own order)",
    )
    cmp.add_argument("--output", required=True, help="directory for results, reports and runs/<method>/")
    cmp.add_argument("--config", help="YAML with TrainConfig keys applied to every method")
    add_config_flags(cmp, keys_tagged(TAG_COMPARE), DEFAULT_BUDGET, QUICK_BUDGET, names={"train": "--data"})
    cmp.add_argument("--quick", action="store_true", help="small budget (<= 10 min): checks the pipeline")
    cmp.add_argument("--resume", action="store_true", help="skip methods already finished in --output")
    cmp.add_argument(
        "--permutations",
        metavar="cyclic|all|K|none",
        help="also report permutation-averaged accuracy on the final evaluation set (costs K x its "
        "time) (default: cyclic with --objective letter, none otherwise: cloze ignores option order)",
    )
    cmp.add_argument(
        "--method-timeout",
        type=float,
        metavar="SECONDS",
        help="stop a method after this long (failure) (default: no limit)",
    )
    cmp.add_argument(
        "--tune",
        choices=TUNE_CHOICES,
        help="choose each method's learning rate from its lr_grid (configs/methods/<name>.yaml) by "
        "successive halving on a dev split of the training data, never on the validation rows "
        "(default: off: each method's own lr)",
    )
    cmp.add_argument(
        "--dev-size",
        type=int,
        metavar="N",
        help=f"--tune: training rows held out as the dev split (default: {DEV_SIZE}; "
        f"--quick: {QUICK_DEV_SIZE})",
    )
    cmp.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="final runs per method (seeds seed, seed+1, ...); the table shows mean and spread and tests "
        "every method against the best on the same questions (default: %(default)s)",
    )
    cmp.add_argument(
        "--eval-data",
        nargs="+",
        metavar="DATA",
        help="further data sets (files or bundled names; a bundled name's validation split) every run "
        "and zero-shot are also scored on, each with its own majority baseline and CI (default: none)",
    )
    cmp.add_argument(
        "--budget",
        metavar="steps|time=DURATION",
        help="equal optimizer steps per method, or equal training time (time=5m, time=90s): each method "
        "then trains as many steps as fit (default: steps)",
    )
    cmp.add_argument("--quiet", action="store_true", help="do not echo each method's log lines")
    add_backend_args(cmp)
    add_data_args(cmp)
    cmp.set_defaults(func=cmd_compare)

    from mcqtune.estimate import PRECISIONS as WEIGHT_PRECISIONS
    from mcqtune.estimate import SHARDINGS

    train_defaults = TrainConfig()

    est = sub.add_parser(
        "estimate",
        help="per-device training memory of a method on a model, from its config.json alone",
        description="Split one training process's memory into frozen weights, trainable parameters, "
        "gradients, optimizer state, activations and overhead, without loading weights "
        "(docs/SCALING.md). --model: a shipped name (llama-3.2-1b, llama-3.1-8b, llama-3.1-70b, "
        "qwen2.5-1.5b, qwen2.5-7b), a config.json, a directory holding one, or any train --model.",
    )
    est.add_argument("--model", help="model (default: the bundled SmolLM2-135M)")
    est.add_argument("--method", default=train_defaults.method, help="any registered method")
    est.add_argument(
        "--batch-size", type=int, default=train_defaults.batch_size, help="questions per micro-batch"
    )
    est.add_argument("--max-length", type=int, default=PromptConfig().max_length, help="tokens per sequence")
    est.add_argument("--precision", choices=tuple(WEIGHT_PRECISIONS), default="bf16", help="weights dtype")
    est.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=train_defaults.objective,
        help="decides how many positions reach the LM head (auto: as train decides)",
    )
    est.add_argument("--num-processes", type=int, default=1, help="data-parallel processes")
    est.add_argument(
        "--sharding",
        choices=SHARDINGS,
        default="none",
        help="none: DDP (a full copy per process); zero2: optimizer state and gradients split; "
        "zero3/fsdp: the weights too",
    )
    add_config_flags(est, ("gradient_checkpointing",))  # the same flag and help as train's
    est.add_argument("--option", action="append", metavar="KEY=VALUE", help="method option, e.g. r=8")
    est.add_argument("--json", action="store_true", help="the same figures in bytes, as JSON")
    est.set_defaults(func=cmd_estimate)

    from mcqtune import serving

    srv = sub.add_parser(
        "serve",
        help="HTTP API and web page: one base model, many trained artifacts chosen per request",
        description="Serve answers over HTTP (docs/SERVING.md). Binds 127.0.0.1 unless --host says "
        "otherwise; any other address needs --api-key-file. Without --adapter it serves the base zero-shot.",
    )
    srv.add_argument(
        "--model", help="base model; every artifact must match it (default: the bundled SmolLM2)"
    )
    srv.add_argument(
        "--adapter", action="append", metavar="NAME=DIR", help="a run directory served as NAME (repeat)"
    )
    srv.add_argument(
        "--adapter-dir", metavar="DIR", help="every run directory directly under DIR is loadable by its name"
    )
    srv.add_argument("--host", default=serving.DEFAULT_HOST, help="address to bind")
    srv.add_argument("--api-key-file", metavar="FILE", help="a file holding the API key requests must carry")
    srv.add_argument("--precision", default="auto", choices=PRECISIONS, help="auto: bf16 where supported")
    srv.add_argument("--no-batching", action="store_true", help="one question per forward pass")
    for flag, kind, default, text in (
        ("--port", int, serving.DEFAULT_PORT, "port"),
        ("--max-loaded", int, serving.DEFAULT_MAX_LOADED, "--adapter-dir artifacts held at once (LRU)"),
        ("--batch-window-ms", float, serving.DEFAULT_WINDOW_MS, "how long a batch waits for more questions"),
        ("--max-batch", int, serving.DEFAULT_MAX_BATCH, "questions per forward pass at most"),
        ("--max-body-bytes", int, serving.DEFAULT_MAX_BODY_BYTES, "larger request bodies get 413"),
    ):
        srv.add_argument(flag, type=kind, default=default, help=f"{text} ")
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
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USER_ERROR
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s"
    )
    quiet_libraries()
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
