"""`mcqtune compare`: train every method under the same budget and tell the user which one to use.

Every method gets the same data, seed, optimizer steps x batch size (so the same number of training
examples seen), the same validation subset for the learning curves and the same final evaluation set;
only each method's own defaults (learning rate, rank, bottleneck size...) from
``configs/methods/<name>.yaml`` differ. A zero-shot row (the base model, no training, same scoring on
the same evaluation set) is the bar every method must clear.

Each method trains in a fresh subprocess (``python -m mcqtune.compare.runner --worker SPEC``) that calls
:func:`mcqtune.train.train` and writes ``compare_run.json`` into its run directory: status, wall time and
its own peak memory (``ru_maxrss`` of that process on CPU, ``torch.cuda.max_memory_allocated`` on GPU).
So peaks are per method, and a method that crashes or is killed (out of memory: SIGKILL) is recorded
as a failed row without stopping the others. ``--resume`` skips methods whose run directory already
holds a successful record made with the same resolved config. Run directories are ordinary ``train``
outputs, usable by ``mcqtune eval/predict --adapter DIR/runs/<method>``.

Budget: default <= 60 min, ``--quick`` <= 10 min on an idle 2-core CPU (bundled SmolLM2-135M,
ARC-Easy, ranking objective = cloze scoring, batch 4, bf16 autocast).

Measured with the default run itself (``mcqtune compare --output runs/compare``, 2026-11-28, idle
2-vCPU AMD EPYC with AVX-512-bf16, 2 threads): 21.1 min in all. Each method carries its own training
seconds per step (``metrics.json``: ``train.seconds`` / 150) and final-evaluation seconds per question
(1 / its questions/s) as ``Method.step_seconds`` and ``Method.eval_seconds_per_question``; the whole
worker's wall time (start-up, step-0 and curve evaluations, training, final evaluation on 500
questions) was: zero-shot 29 s, full 191 s, subset 96 s, adapter 155 s, prefix 330 s (unpacked
scoring), lora 197 s, qlora 231 s.

:func:`estimate_seconds` applies the per-method numbers and ``compare`` prints the estimate before it starts.

Default: 150 steps x batch 4 (600 questions seen, a third of ARC-Easy train); learning curve at steps
0/50/100/150 on 64 validation questions; final evaluation on all 500 validation questions (95% CI
about +-4 points, enough to separate methods ~8 points apart): ~21 min, a third of the 60-minute
budget, which leaves room for a slower laptop or a busy machine.

``--quick``: 16 steps, curve at 0/8/16 on 24 questions, final evaluation on 64 questions: ~4 min.
Its CIs are +-12 points: ``--quick`` checks the pipeline, it does not pick a method.
``--permutations cyclic`` scores the final set 4 more times (~+10 min for the default budget).

Every unit of work is a :class:`~mcqtune.compare.backends.Job` (one training run or the zero-shot
evaluation, and its evaluations) executed by :func:`run_units` on a backend (in turn, ``--parallel K``,
``--backend ray``): the final runs (``--seeds N``: N per method), and with ``--tune lr`` the
learning-rate trials of :mod:`mcqtune.compare.trials`, rung by rung. :mod:`mcqtune.compare.evidence`
folds the runs into table rows (mean +- spread, paired tests against the best, ``--eval-data`` transfer
columns). ``--budget time=5m`` gives every method the same seconds of training instead of the same steps.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcqtune.artifacts import CONFIG_FILE, MANIFEST, METRICS
from mcqtune.atomic import atomic_write_json, atomic_write_text
from mcqtune.compare.backends import (
    CHECKPOINT_GRACE_SECONDS,
    RUN_RECORD,
    Backend,
    Execution,
    Job,
    open_backend,
)
from mcqtune.compare.evidence import ANSWERS, IN_DOMAIN, ZERO_SHOT
from mcqtune.config import TAG_SHARED, TAG_ZERO_SHOT, keys_tagged
from mcqtune.evaluation.metrics import PER_QUESTION
from mcqtune.progress import task

log = logging.getLogger(__name__)

RUNS_DIR = "runs"  # OUTPUT/runs/<method>: one ordinary `train` run directory per row
RUN_LOG = "compare.log"
RUN_SPEC = "compare_spec.json"
PLAN_FILE = "compare_plan.json"
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
# What compare gives every method unless --config or a flag says otherwise (TrainConfig keys; the
# ``compare --help`` defaults are read from here). No periodic checkpoints (they cost full fine-tuning
# ~1.5 GB and seconds each); Ctrl-C still saves one, which `compare --resume` continues from.
COMPARE_DEFAULTS: dict[str, Any] = {"train": "arc_easy", "objective": "ranking", "save_steps": None}
# The budget: steps x batch = examples seen, and the evaluation sizes (final_eval_limit None: all rows).
DEFAULT_BUDGET: dict[str, Any] = {
    **COMPARE_DEFAULTS,
    "max_steps": 150,
    "batch_size": 4,
    "eval_steps": 50,
    "eval_limit": 64,
    "final_eval_limit": None,
}
QUICK_BUDGET: dict[str, Any] = {
    **DEFAULT_BUDGET,
    "max_steps": 16,
    "eval_steps": 8,
    "eval_limit": 24,
    "final_eval_limit": 64,
}

TUNE_CHOICES = ("lr",)
BUDGET_KINDS = ("steps", "time")  # --budget: equal optimizer steps (default) or equal training seconds
WORKER_START_SECONDS = 6.0  # a worker's start-up before it trains or scores (estimate_seconds)

# Keys that must be identical across methods for the comparison to be fair (checked after resolving).
SHARED_KEYS = keys_tagged(TAG_SHARED)


@dataclass
class CompareSettings:
    output: Path
    methods: list[str] | None = None  # None: every registered method
    config_file: str | None = None
    quick: bool = False
    resume: bool = False
    # TrainConfig keys given on the command line (None: not given): over --config, over the budget.
    overrides: dict[str, Any] = field(default_factory=dict)
    # --field/--answer-base/--strip-query-prefix as TrainConfig keys (None: not given).
    data_fields: dict[str, Any] = field(default_factory=dict)
    method_timeout: float | None = None
    permutations: str | None = (
        None  # e.g. "cyclic": permutation-averaged accuracy (mcqtune.evaluation.analysis)
    )
    tune: str | None = None  # "lr": pick each method's learning rate on a dev split (compare/trials.py)
    dev_size: int | None = None  # rows of that dev split (None: trials.DEV_SIZE or QUICK_DEV_SIZE)
    seeds: int = 1  # final runs per method, seeds seed, seed+1, ...
    eval_data: list[str] = field(default_factory=list)  # further data sets every row is scored on
    time_budget: float | None = None  # seconds of training per method (--budget time=...); None: steps
    echo: bool = True
    command: str | None = None
    # How a worker is started: [python, *worker_args, SPEC]. Tests inject a plug-in-registering script.
    worker_args: list[str] = field(default_factory=lambda: ["-m", "mcqtune.compare.runner", "--worker"])
    # Where and how many jobs run at once (mcqtune.compare.backends): sequential unless asked.
    execution: Execution = field(default_factory=Execution)


def make_job(settings: CompareSettings, name: str, row: str, kind: str, config: dict[str, Any]) -> Job:
    """One unit of work in ``OUTPUT/runs/<name>``: final runs (one per method and seed), tuning trials and
    the zero-shot evaluation alike; ``row`` is the table row (or the tuned method) it belongs to."""
    permutations, eval_data = settings.permutations, tuple(settings.eval_data)
    return Job(
        name=name,
        row=row,
        kind=kind,
        config=config,
        fingerprint=fingerprint(config, kind, permutations, eval_data),
        run_dir=settings.output / RUNS_DIR / name,
        permutations=permutations,
        eval_data=eval_data,
    )


TRAIN = "train"


@dataclass
class CompareResult:
    output: Path
    rows: list[dict[str, Any]]
    files: dict[str, Path]
    seconds: float


# ------------------------------------------------------------------------------------------- planning
def default_methods() -> list[str]:
    """Every registered method except the presets (DoRA, rsLoRA, ...: ask for them with ``--methods``, or
    a default compare would train LoRA five times over), in the order the methods give
    (``Method.compare_order``, then name)."""
    from mcqtune.methods import METHODS

    methods = [name for name, method in METHODS.items() if method.preset_of is None]
    return sorted(methods, key=lambda name: (METHODS[name].compare_order, name))


def parse_methods(text: str | None) -> list[str] | None:
    if text is None or not text.strip() or text.strip().lower() == "all":
        return None
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    return list(dict.fromkeys(n for n in names if n not in (ZERO_SHOT, "zero_shot", "zeroshot")))


def _check_methods(methods: list[str]) -> None:
    from mcqtune.config import ConfigError
    from mcqtune.methods import METHODS

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(
            f"--methods: unknown method(s) {', '.join(unknown)}; registered: {', '.join(sorted(METHODS))}"
        )
    if not methods:
        raise ConfigError("--methods: no method to compare")


def parse_budget(text: str | None) -> float | None:
    """``--budget``: ``steps`` (None: equal optimizer steps) or ``time=5m`` / ``time=90s`` / ``time=1h``
    (seconds of training per method)."""
    from mcqtune.config import ConfigError

    if text is None or text.strip().lower() == "steps":
        return None
    kind, _, amount = text.strip().lower().partition("=")
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    scale = units.get(amount[-1:]) if amount else None
    number = amount[:-1] if scale else amount
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        seconds = -1.0
    if kind != "time" or not seconds > 0:
        raise ConfigError(
            f"--budget: expected 'steps' or 'time=DURATION' (e.g. time=5m, time=90s), got {text!r}"
        )
    return seconds


def eval_set_name(ref: str) -> str:
    """How reports name a further data set: a bundled name as given, a file by its stem."""
    path = Path(ref).expanduser()
    return path.stem if path.is_file() else ref


def plan_configs(settings: CompareSettings) -> dict[str, Any]:
    """Resolve every method's TrainConfig (user errors surface here, before an hour of training)."""
    from mcqtune.config import ConfigError, build_config

    methods = settings.methods or default_methods()
    _check_methods(methods)
    budget = QUICK_BUDGET if settings.quick else DEFAULT_BUDGET
    runs = settings.output / RUNS_DIR
    if settings.seeds < 1:
        raise ConfigError(f"--seeds must be a positive integer, got {settings.seeds}")
    if settings.tune is not None and settings.tune not in TUNE_CHOICES:
        raise ConfigError(f"--tune: one of {', '.join(TUNE_CHOICES)}, got {settings.tune!r}")

    def resolve(method: str, name: str):
        given = {**settings.overrides, **settings.data_fields, "max_train_seconds": settings.time_budget}
        flags = {**given, "method": method, "output": str(runs / name)}
        config = build_config(flags, settings.config_file, defaults=budget)
        ceiling = time_budget_steps(config)
        if not ceiling:
            return config
        # as many learning-curve points as under the step budget
        every = max(1, round(ceiling * config.eval_steps / config.max_steps))
        return dataclasses.replace(config, max_steps=ceiling, eval_steps=every)

    configs = {method: resolve(method, method) for method in methods}
    # Zero-shot: the same evaluation keys; the method only picks which defaults file is read.
    zero = resolve(methods[0], ZERO_SHOT)
    if zero.validation is None:
        raise ConfigError(
            f"--data {zero.train}: a data file has no implicit validation split; pass --validation"
        )
    reference = zero.to_dict()
    # With a time budget each method's step count is its own (what fits in the time); the time is shared.
    per_method = ("max_steps", "eval_steps") if settings.time_budget else ()
    shared_keys = [k for k in SHARED_KEYS if k not in per_method]
    for method, config in configs.items():
        data = config.to_dict()
        different = [k for k in shared_keys if data[k] != reference[k]]
        if different:  # only possible if a method's defaults file sets a shared key
            raise ConfigError(
                f"method '{method}' resolves {', '.join(different)} differently from the others; "
                "set them in --config or on the command line so every method gets the same budget"
            )
    if settings.tune:
        from mcqtune.config import method_lr_grid

        for method in methods:
            method_lr_grid(method)  # a missing grid is an error now, not after the first method
    names = [eval_set_name(ref) for ref in settings.eval_data]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"--eval-data: two data sets named {', '.join(repeated)}; rename a file")
    # Loaded now, so a bad file fails before any training (and --tune keeps their questions out of dev).
    eval_sets = {name: _load_rows(zero, ref) for name, ref in zip(names, settings.eval_data, strict=True)}
    return {"methods": methods, "configs": configs, "zero_shot": zero, "eval_sets": eval_sets}


def _load_rows(config, ref: str) -> list[Any]:
    from mcqtune.training.recipe import load_split

    return load_split(resolve_data_path(ref), config, None)[0]


def resolve_data_path(ref: str) -> Path:
    """A further data set's file: a file as given, a bundled name's validation split."""
    from mcqtune.data import resolve_data

    return resolve_data(ref, "validation")


def _on_reference_machine(config) -> bool:
    """Whether the measured per-method speeds apply: the bundled model on a CPU."""
    import torch

    from mcqtune.models import DEFAULT_MODEL, MODEL_ALIASES

    return not torch.cuda.is_available() and MODEL_ALIASES.get(config.model, config.model) == DEFAULT_MODEL


def seconds_per_step(config) -> float | None:
    """Measured training seconds per optimizer step of ``config``'s method and batch (None off the
    reference machine: bundled model, idle 2-core CPU)."""
    from mcqtune.methods import get_method

    if not _on_reference_machine(config):
        return None
    return get_method(config.method).step_seconds * config.batch_size * config.grad_accum / 4


def time_budget_steps(config) -> int | None:
    """Under a time budget, the steps that fit in it at the method's measured speed, so its learning-rate
    schedule ends near the deadline (the deadline stops it either way); None: keep ``max_steps`` (no
    time budget, or no measured speed, where ``max_steps`` stays the ceiling)."""
    per_step = seconds_per_step(config) if config.max_train_seconds else None
    return max(1, math.ceil(config.max_train_seconds / per_step)) if per_step else None


def curve_points(max_steps: int, eval_steps: int) -> int:
    """Validations train() runs: step 0, every eval_steps, and the last step."""
    return 1 + len({s for s in range(eval_steps, max_steps + 1, eval_steps)} | {max_steps})


def estimate_seconds(plan: dict[str, Any], settings: CompareSettings) -> float | None:
    """Wall time of a compare on an idle 2-core CPU with the bundled model; None for anything else.
    Counts every run: zero-shot, each method's seeds, and with --tune its trials (the halving schedule
    is fixed by the grid sizes, only which candidates survive depends on the scores)."""
    from mcqtune.compare import trials
    from mcqtune.data import load_examples, resolve_data
    from mcqtune.methods import Method, get_method

    zero = plan["zero_shot"]
    if not _on_reference_machine(zero):
        return None
    try:
        path = resolve_data(zero.validation, "validation")
        n_val = len(load_examples(path, zero.format, field_map=zero.field_map()).examples)
    except Exception:  # the real run reports data problems properly
        return None
    final = min(zero.final_eval_limit or n_val, n_val)
    scored_final = final * (5 if settings.permutations else 1)  # + cyclic orders of 4 options
    limit = zero.final_eval_limit
    scored_final += sum(min(len(rows), limit or len(rows)) for rows in plan["eval_sets"].values())
    # zero-shot: the base model alone scores at the rate of a method that adds nothing to it
    total = WORKER_START_SECONDS + Method.eval_seconds_per_question * scored_final
    for name, config in plan["configs"].items():
        method = get_method(name)
        questions = curve_points(config.max_steps, config.eval_steps) * min(config.eval_limit or n_val, n_val)
        training = seconds_per_step(config) * config.max_steps
        one_run = (
            WORKER_START_SECONDS + training + method.eval_seconds_per_question * (questions + scored_final)
        )
        total += one_run * settings.seeds
        if settings.tune:
            for steps in trials.trial_steps(config, len(trials.lr_candidates(name))):
                dev = trials.dev_size(settings)
                total += WORKER_START_SECONDS + seconds_per_step(config) * steps
                total += method.eval_seconds_per_question * (dev + 2 * trials.TRIAL_CURVE_ROWS)
    return total


# What a zero-shot row depends on (its config also carries training keys it never uses).
ZERO_SHOT_KEYS = keys_tagged(TAG_ZERO_SHOT)


def fingerprint(
    config_dict: dict[str, Any], kind: str, permutations: str | None = None, eval_data: Sequence[str] = ()
) -> str:
    """What must match for --resume to reuse a finished row."""
    from mcqtune import __version__

    if kind == ZERO_SHOT:
        data = {k: config_dict.get(k) for k in ZERO_SHOT_KEYS}
    else:
        data = {k: v for k, v in config_dict.items() if k != "output"}
    blob = json.dumps(
        {
            "kind": kind,
            "config": data,
            "version": __version__,
            "permutations": permutations,
            "eval_data": list(eval_data),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- worker
def _peak_memory() -> dict[str, Any]:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes
    out: dict[str, Any] = {"peak_rss_bytes": int(rss_bytes)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


@dataclass
class _EvalContext:
    """Everything train()'s final evaluation uses, rebuilt so zero-shot and extras score the same way."""

    encoder: Any
    rows: list[Any]
    device: Any
    precision: str
    packed: bool

    def score_kwargs(self, config) -> dict[str, Any]:
        return {
            "batch_size": config.eval_batch_size,
            "packed": self.packed,
            "precision": self.precision,
            "device": self.device,
        }


def _eval_context(
    config, tokenizer=None, packed: bool | None = None, data_file: Path | None = None
) -> _EvalContext:
    """The final evaluation's setup on the validation data, or on ``data_file`` (a further data set)."""
    from mcqtune.data import load_examples, resolve_data
    from mcqtune.evaluation.evaluate import resolve_precision
    from mcqtune.methods import get_method
    from mcqtune.models import default_device, load_tokenizer, resolve_model
    from mcqtune.prompt import PromptEncoder

    if tokenizer is None:
        tokenizer = load_tokenizer(resolve_model(config.model))
    device = default_device()
    data = load_examples(
        data_file or resolve_data(config.validation, "validation"),
        config.format,
        on_bad_rows=config.on_bad_rows,
        field_map=config.field_map(),
    )
    rows = data.examples[: config.final_eval_limit] if config.final_eval_limit else data.examples
    if packed is None:
        packed = config.packing and get_method(config.method).supports_packing
    return _EvalContext(
        encoder=PromptEncoder(tokenizer, config.prompt_config()),
        rows=rows,
        device=device,
        precision=resolve_precision(config.precision, device),
        packed=packed,
    )


def _evaluate_zero_shot(config) -> tuple[dict[str, Any], Any, str, _EvalContext]:
    """The base model, untrained, scored exactly like train()'s final evaluation: its metrics file, the
    model, the scoring and the evaluation setup (for the permutation and further data set scores)."""
    from mcqtune.config import OBJECTIVE_TO_SCORING, resolve_objective
    from mcqtune.evaluation.format import format_metrics
    from mcqtune.evaluation.metrics import PER_QUESTION, compute_metrics, per_question
    from mcqtune.inference import Predictor

    predictor = Predictor(config.model, precision=config.precision)
    model = predictor.module()
    context = _eval_context(config, predictor.tokenizer, packed=config.packing)
    objective = resolve_objective(config.objective, model.num_parameters())
    scoring = OBJECTIVE_TO_SCORING[objective]
    name = Path(config.validation).name
    with task(f"zero-shot validation ({name})"):
        scored = predictor.score(
            context.rows,
            scoring=scoring,
            prompt=context.encoder.config,
            packed=context.packed,
            batch_size=config.eval_batch_size,
        ).scored
    metrics = compute_metrics(scored) | {PER_QUESTION: per_question(scored)}
    print(format_metrics(metrics, f"validation ({name}, zero-shot, {scoring} scoring):"), flush=True)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    metrics_file = {
        "method": ZERO_SHOT,
        "objective": objective,
        "parameters": {"trainable": 0, "total": total, "trainable_percent": 0.0},
        "artifact_bytes": 0,
        "validation": metrics,
        "history": [],
    }
    return metrics_file, model, scoring, context


# What a further data set's score keeps (compute_metrics' keys): enough for its column group and tests.
TRANSFER_KEYS = ("n", "accuracy", "ci95", "majority_baseline", "scoring")


def _score_further_sets(
    model, config, scoring: str, packed: bool | None, eval_data: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, CI, majority baseline and per-question answers of ``model`` on each further data set
    (first ``final_eval_limit`` rows, read with the same format and field flags as the validation data)."""
    from mcqtune.evaluation.evaluate import score_examples
    from mcqtune.evaluation.format import format_metrics
    from mcqtune.evaluation.metrics import PER_QUESTION, compute_metrics, per_question

    out: dict[str, Any] = {}
    for ref in eval_data:
        name = eval_set_name(ref)
        context = _eval_context(config, packed=packed, data_file=resolve_data_path(ref))
        with task(f"further data set ({name})"):
            scored = score_examples(
                model, context.encoder, context.rows, scoring, **context.score_kwargs(config)
            )
        metrics = compute_metrics(scored)
        print(format_metrics(metrics, f"further data set {name} ({scoring} scoring):"), flush=True)
        out[name] = {k: metrics.get(k) for k in TRANSFER_KEYS} | {PER_QUESTION: per_question(scored)}
    return out


def _permutation_accuracy(
    model, config, context: _EvalContext | None, scoring: str | None, mode: str | None
) -> dict[str, Any] | None:
    """Accuracy averaged over option orders on the final evaluation set (optional)."""
    if not mode or model is None or not scoring:
        return None
    from mcqtune.evaluation.analysis import score_permutations
    from mcqtune.evaluation.metrics import permutation_summary as summarise

    context = context or _eval_context(config)
    with task(f"permutations ({mode}, {Path(config.validation).name})"):
        kwargs = context.score_kwargs(config) | {"seed": config.seed}
        result = score_permutations(model, context.encoder, context.rows, scoring, mode, **kwargs)
    summary = summarise(result)
    print(
        f"permutation-averaged accuracy ({mode}): {summary.get('accuracy_mean', float('nan')) * 100:.1f}%",
        flush=True,
    )
    keys = ("mode", "n", "orders_per_question", "accuracy_mean", "accuracy_circular", "answer_changes_share")
    return {k: summary.get(k) for k in keys} | {"seconds": summary.get("seconds")}


def _train_one(config, resume: bool):
    """train() in this process; with --resume, continue from the run's own checkpoint when it has one.
    Its progress reaches the log as a line every few seconds (stdout is a pipe, not a terminal)."""
    from mcqtune.training.recipe import train

    if resume:
        finished = _reuse_finished_run(config)
        if finished is not None:
            return finished
        try:
            return train(config, keep_model=True, overwrite=False)
        except ValueError as exc:  # CheckpointError: finished with another config, or nothing to resume
            print(f"not continuing the earlier run ({exc}); starting {config.method} over", flush=True)
    return train(config, keep_model=True, overwrite=True)


def _reuse_finished_run(config):
    """A run that finished training (``metrics.json`` and ``config.yaml`` written with this config) but
    whose compare record is missing (the worker stopped during the extra evaluation): load its artifact
    instead of training it again. Returns None when the run is not finished or had another config."""
    import yaml

    from mcqtune.inference import Predictor
    from mcqtune.training.checkpoint import config_differences
    from mcqtune.training.recipe import TrainResult

    output = Path(config.output)
    try:
        metrics = json.loads((output / METRICS).read_text(encoding="utf-8"))
        saved = yaml.safe_load((output / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, yaml.YAMLError):
        return None
    current = config.to_dict() | {"objective": metrics.get("objective", config.objective)}
    if not isinstance(saved, dict) or config_differences(saved, current):
        return None
    predictor = Predictor.open(None, {output.name: output}, precision=config.precision)
    print(f"{output} already holds this finished run: reusing it, not training again", flush=True)
    model = predictor.module(output.name)
    return TrainResult(output=output, metrics=metrics, history=metrics.get("history", []), model=model)


def worker_main(argv: list[str]) -> int:
    """Child-process entry: train (or evaluate zero-shot) one row and write its record."""
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    run_dir = Path(spec["run_dir"])
    kind = spec["kind"]
    from mcqtune.quiet import quiet_libraries

    quiet_libraries()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from mcqtune.config import TrainConfig

    record: dict[str, Any] = {"kind": kind, "method": spec["method"], "fingerprint": spec["fingerprint"]}
    start = time.perf_counter()
    try:
        config = TrainConfig(**spec["config"])
        config.validate("compare")
        if kind == ZERO_SHOT:
            metrics, model, scoring, context = _evaluate_zero_shot(config)
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / METRICS, metrics)
            packed = context.packed
        else:
            result = _train_one(config, bool(spec.get("resume")))
            model, context = result.model, None
            scoring = (result.metrics.get("validation") or {}).get("scoring")
            packed = None  # the method's own (as train() scored it)
        permutation = _permutation_accuracy(model, config, context, scoring, spec.get("permutations"))
        if permutation is not None:
            record["permutation"] = permutation
        if spec.get("eval_data") and scoring:
            record["transfer"] = _score_further_sets(model, config, scoring, packed, spec["eval_data"])
        record["status"] = "ok"
    except BaseException as exc:  # every failure becomes a row, including MemoryError and Ctrl-C
        traceback.print_exc()
        record.update(status="failed", error=_describe_error(exc))
    record["wall_seconds"] = round(time.perf_counter() - start, 2)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    record["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 2)
    with contextlib.suppress(OSError):
        record["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    record.update(_peak_memory())
    torch = sys.modules.get("torch")
    record["device"] = "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
    record["threads"] = torch.get_num_threads() if torch is not None else None
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / RUN_RECORD, record)
    return 0 if record["status"] == "ok" else 1


def _describe_error(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "out of memory" in text.lower() or isinstance(exc, MemoryError):
        name = f"out of memory ({name})"
    return f"{name}: {text}"[:300] if text else name


# ------------------------------------------------------------------------------------------- parent
def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class _MemoryPoller(threading.Thread):
    """Peak RSS of a child process tree, sampled twice a second (fallback when the child is killed)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        try:
            proc = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.stop.is_set():
            try:
                rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
                self.peak = max(self.peak, rss)
            except psutil.Error:
                return
            self.stop.wait(0.5)


def run_job(
    settings: CompareSettings,
    job: Job,
    env: Mapping[str, str],
    started: Callable[[subprocess.Popen], None] | None = None,
) -> dict[str, Any]:
    """What a backend runs: one unit's worker, with ``env`` added (threads, GPU); returns its record."""
    steps = job.config["max_steps"]
    what = "zero-shot evaluation" if job.kind == ZERO_SHOT else f"training {steps} steps"
    print(f"{job.name}: {what}...", flush=True)
    return _run_worker(settings, job, env=env, started=started)


def _run_worker(
    settings: CompareSettings,
    job: Job,
    *,
    env: Mapping[str, str] | None = None,
    started: Callable[[subprocess.Popen], None] | None = None,
) -> dict[str, Any]:
    method, kind, fp = job.name, job.kind, job.fingerprint
    run_dir = job.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_RECORD).unlink(missing_ok=True)  # never read a stale record after a crash
    spec = {
        "kind": kind,
        "method": method,
        "run_dir": str(run_dir),
        "config": job.config,
        "fingerprint": fp,
        "resume": settings.resume,
        "permutations": job.permutations,
        "eval_data": list(job.eval_data),
    }
    spec_path = run_dir / RUN_SPEC
    atomic_write_json(spec_path, spec)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    command = [sys.executable, *settings.worker_args, str(spec_path)]
    start = time.perf_counter()
    with open(run_dir / RUN_LOG, "a", encoding="utf-8") as log_file:
        log_file.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n")
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
        )
        if started is not None:
            started(proc)
        poller = _MemoryPoller(proc.pid)
        poller.start()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                log_file.write(line)
                log_file.flush()
                if settings.echo:
                    print(f"  [{method}] {line.rstrip()}", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=settings.method_timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            proc.wait()
        except BaseException:
            # Ctrl-C reaches the worker too (same process group): give it time to save a checkpoint
            # that `compare --resume` continues from, then make sure no orphan keeps training.
            print(
                f"  [{method}] interrupted: waiting up to {CHECKPOINT_GRACE_SECONDS:g} s for it to save "
                "a checkpoint",
                flush=True,
            )
            try:
                if proc.poll() is None:  # the signal may have reached only this process
                    proc.send_signal(signal.SIGINT)
                proc.wait(timeout=CHECKPOINT_GRACE_SECONDS)
            except BaseException:
                proc.kill()
                proc.wait()
            raise
        finally:
            poller.stop.set()
            reader.join(timeout=10)
    wall = round(time.perf_counter() - start, 2)
    record_path = run_dir / RUN_RECORD
    record: dict[str, Any] = {}
    if record_path.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(record_path.read_text(encoding="utf-8"))
    if not record:
        if timed_out:
            error = f"timed out after {settings.method_timeout:g} s (--method-timeout)"
        elif proc.returncode < 0:
            name = _signal_name(proc.returncode)
            likely = " (likely out of memory: killed by the kernel)" if name == "SIGKILL" else ""
            error = f"killed by {name}{likely}"
        else:
            error = f"worker exited with code {proc.returncode} before writing a record"
        record = {
            "kind": kind,
            "method": method,
            "fingerprint": fp,
            "status": "failed",
            "error": error + f"; see {run_dir / RUN_LOG}",
            "wall_seconds": wall,
            "peak_rss_bytes": poller.peak or None,
        }
        atomic_write_json(record_path, record)
    record["process_wall_seconds"] = wall
    return record


def _finished(run_dir: Path, fp: str) -> dict[str, Any] | None:
    try:
        record = json.loads((run_dir / RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("status") != "ok" or record.get("fingerprint") != fp:
        return None
    if not (run_dir / METRICS).is_file():
        return None
    return record


# ------------------------------------------------------------------------------------------- rows
def _tv_distance(pred: dict[str, float], gold: dict[str, float]) -> float | None:
    if not pred or not gold:
        return None
    return round(0.5 * sum(abs(pred.get(k, 0.0) - gold.get(k, 0.0)) for k in set(pred) | set(gold)), 4)


def build_row(
    method: str, record: dict[str, Any], run_dir: Path, config_dict: dict[str, Any]
) -> dict[str, Any]:
    """One table row from a run's record and metrics (None where a number does not exist)."""
    row: dict[str, Any] = {
        "method": method,
        "status": record.get("status", "failed"),
        "error": record.get("error"),
        "objective": None,
        "scoring": None,
        "lr": None if method == ZERO_SHOT else config_dict.get("lr"),
        "n_eval": None,
        "accuracy": None,
        "ci95_low": None,
        "ci95_high": None,
        "majority_baseline": None,
        "accuracy_minus_baseline": None,
        "predicted_letter_distribution": None,
        "gold_letter_distribution": None,
        "letter_tv_distance": None,
        "permutation_accuracy": None,
        "trainable_params": 0 if method == ZERO_SHOT else None,
        "trainable_percent": 0.0 if method == ZERO_SHOT else None,
        "total_params": None,
        "artifact_bytes": 0 if method == ZERO_SHOT else None,
        "train_seconds": 0.0 if method == ZERO_SHOT else None,
        "train_tokens_per_second": None,
        "steps": 0 if method == ZERO_SHOT else None,
        "examples_seen": 0 if method == ZERO_SHOT else None,
        "best_step": None,
        "wall_seconds": record.get("wall_seconds"),
        "peak_memory_bytes": None,
        "peak_memory_kind": None,
        "eval_questions_per_second": None,
        "run_dir": str(run_dir),
        "learning_curve": [],
    }
    cuda = record.get("cuda_max_allocated_bytes")
    if cuda is not None:
        row["peak_memory_bytes"], row["peak_memory_kind"] = cuda, "cuda_max_allocated"
    elif record.get("peak_rss_bytes"):
        row["peak_memory_bytes"], row["peak_memory_kind"] = record["peak_rss_bytes"], "rss"
    metrics_path = run_dir / METRICS
    if row["status"] != "ok" or not metrics_path.is_file():
        return row
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    val = metrics.get("validation") or {}
    params = metrics.get("parameters") or {}
    train = metrics.get("train") or {}
    row.update(
        objective=metrics.get("objective"),
        scoring=val.get("scoring"),
        n_eval=val.get("n"),
        accuracy=val.get("accuracy"),
        majority_baseline=val.get("majority_baseline"),
        predicted_letter_distribution=val.get("predicted_letter_distribution"),
        gold_letter_distribution=val.get("gold_letter_distribution"),
        permutation_accuracy=(record.get("permutation") or {}).get("accuracy_mean"),
        eval_questions_per_second=val.get("questions_per_second"),
        trainable_params=params.get("trainable", row["trainable_params"]),
        trainable_percent=params.get("trainable_percent", row["trainable_percent"]),
        total_params=params.get("total"),
        artifact_bytes=metrics.get("artifact_bytes", row["artifact_bytes"]),
    )
    if val.get("ci95"):
        row["ci95_low"], row["ci95_high"] = val["ci95"]
    if row["permutation_accuracy"] is None and row["scoring"] == "cloze":
        # Cloze scores each option's text after the question alone: option order cannot change them.
        row["permutation_accuracy"] = row["accuracy"]
    if row["accuracy"] is not None and row["majority_baseline"] is not None:
        row["accuracy_minus_baseline"] = round(row["accuracy"] - row["majority_baseline"], 4)
    row["letter_tv_distance"] = _tv_distance(
        row["predicted_letter_distribution"] or {}, row["gold_letter_distribution"] or {}
    )
    if train:
        row.update(
            train_seconds=train.get("seconds"),
            train_tokens_per_second=train.get("tokens_per_second"),
            steps=train.get("steps"),
            examples_seen=train.get("examples_seen"),
        )
    manifest = run_dir / MANIFEST
    if manifest.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            saved = json.loads(manifest.read_text(encoding="utf-8"))
            row["best_step"] = saved.get("best_step")
            row["packed_options"] = saved.get("packing")
    row["learning_curve"] = [
        [h["step"], h["val_accuracy"]] for h in metrics.get("history", []) if "val_accuracy" in h
    ]
    row["seed"] = config_dict.get("seed")
    row["transfer"] = {}
    row[ANSWERS] = {IN_DOMAIN: val.get(PER_QUESTION)} if val.get(PER_QUESTION) else {}
    for name, scores in (record.get("transfer") or {}).items():
        low, high = scores["ci95"]
        baseline = scores["majority_baseline"]
        row["transfer"][name] = {
            "n_eval": scores["n"],
            "accuracy": scores["accuracy"],
            "ci95_low": low,
            "ci95_high": high,
            "majority_baseline": baseline,
        }
        row[ANSWERS][name] = scores[PER_QUESTION]
    return row


# ------------------------------------------------------------------------------------------- environment
def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
    }
    with contextlib.suppress(OSError, ValueError):
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    with contextlib.suppress(OSError):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB) x{torch.cuda.device_count()}"
    return info


def library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for dist in (
        "mcqtune",
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "bitsandbytes",
        "adapters",
        "numpy",
        "matplotlib",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


# ------------------------------------------------------------------------------------------- driver
def _write_outputs(
    settings: CompareSettings, plan: dict[str, Any], rows: list[dict[str, Any]], meta: dict[str, Any]
) -> dict[str, Path]:
    from mcqtune.compare import report as compare_report

    results = {**meta, "rows": rows}
    out = settings.output
    atomic_write_json(out / RESULTS_JSON, results)
    compare_report.write_csv(out / RESULTS_CSV, rows)
    atomic_write_text(out / REPORT_MD, compare_report.markdown_report(results))
    plots = compare_report.write_plots(out, rows, meta)
    atomic_write_text(out / REPORT_HTML, compare_report.html_report(results, plots))
    return {
        "results.json": out / RESULTS_JSON,
        "results.csv": out / RESULTS_CSV,
        "report.md": out / REPORT_MD,
        "report.html": out / REPORT_HTML,
        **{p.name: p for p in plots},
    }


def final_runs(settings: CompareSettings, plan: dict[str, Any]) -> list[Job]:
    """Zero-shot, then every method once per seed (seed, seed+1, ...): the runs the table is made of.
    The first seed's run keeps the plain name ``runs/<method>``; the others are ``runs/<method>-seed<N>``."""
    runs = [make_job(settings, ZERO_SHOT, ZERO_SHOT, ZERO_SHOT, plan["zero_shot"].to_dict())]
    for method in plan["methods"]:
        config = plan["configs"][method]
        for k in range(settings.seeds):
            name = method if k == 0 else f"{method}-seed{config.seed + k}"
            output = str(settings.output / RUNS_DIR / name)
            seeded = dataclasses.replace(config, seed=config.seed + k, output=output)
            runs.append(make_job(settings, name, method, TRAIN, seeded.to_dict()))
    return runs


def run_compare(settings: CompareSettings) -> CompareResult:
    """Tune (--tune), then train every method (x --seeds) and evaluate zero-shot, each run in its own
    process, writing the table, plots and report after every run."""
    start = time.perf_counter()
    settings.output = Path(settings.output)
    plan = plan_configs(settings)
    backend = open_backend(settings.execution)  # a missing Ray or unreachable cluster fails before any write
    settings.output.mkdir(parents=True, exist_ok=True)
    methods: list[str] = plan["methods"]
    zero_dict = plan["zero_shot"].to_dict()
    user_config_text = (
        Path(settings.config_file).read_text(encoding="utf-8") if settings.config_file else None
    )
    shared = {k: zero_dict[k] for k in SHARED_KEYS}
    meta: dict[str, Any] = {
        "command": settings.command,
        "quick": settings.quick,
        "methods": methods,
        "shared": shared,
        "examples_seen": shared["max_steps"] * shared["batch_size"] * shared["grad_accum"],
        "budget": {"kind": "time", "seconds": settings.time_budget}
        if settings.time_budget
        else {"kind": "steps"},
        "seeds": settings.seeds,
        "eval_data": {eval_set_name(ref): ref for ref in settings.eval_data},
        "config_file": settings.config_file,
        "config_text": user_config_text,
        "machine": machine_info(),
        "versions": library_versions(),
    }
    estimate = estimate_seconds(plan, settings)
    if estimate is not None:
        meta["estimated_seconds"] = round(estimate)
        print(
            f"compare: zero-shot + {len(methods)} method(s) x {settings.seeds} seed(s)"
            + (f", tuning {settings.tune} first" if settings.tune else "")
            + f"; about {estimate / 60:.0f} min on an idle 2-core CPU",
            flush=True,
        )
    rows: list[dict[str, Any]] = []
    files: dict[str, Path] = {}
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a job scheduler, `timeout`) stops the running method cleanly, like Ctrl-C.
        previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if settings.tune:
            from mcqtune.compare.trials import tune_learning_rates

            meta["tuning"] = tune_learning_rates(
                settings, plan, lambda specs: _run_trials(settings, backend, specs)
            )
        meta["per_method"] = {
            m: {"lr": c.lr, "weight_decay": c.weight_decay, "method_options": c.method_options}
            for m, c in plan["configs"].items()
        }
        runs = final_runs(settings, plan)
        atomic_write_json(settings.output / PLAN_FILE, {**meta, "configs": {j.name: j.config for j in runs}})
        _run_final(settings, backend, plan, runs, meta, rows, files, start)
    finally:
        backend.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    elapsed = time.perf_counter() - start
    print(f"compare finished in {elapsed / 60:.1f} min; report: {settings.output / REPORT_HTML}", flush=True)
    return CompareResult(settings.output, rows, files, elapsed)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def _run_trials(
    settings: CompareSettings, backend: Backend, specs: list[Any]
) -> list[tuple[float | None, str | None]]:
    """Tuning trials as ordinary runs; each one's dev accuracy (None when it failed) and error. A trial is
    scored on its dev split only: no further sets (--eval-data), no permutations."""
    dev_only = dataclasses.replace(settings, eval_data=[], permutations=None)
    jobs = [
        make_job(
            dev_only,
            name,
            method,
            TRAIN,
            dataclasses.replace(config, output=str(settings.output / RUNS_DIR / name)).to_dict(),
        )
        for name, method, config in specs
    ]
    rows = [
        build_row(job.row, record, job.run_dir, job.config)
        for job, record in zip(jobs, run_units(settings, backend, jobs), strict=True)
    ]
    return [(row["accuracy"], row["error"]) for row in rows]


def run_units(
    settings: CompareSettings,
    backend: Backend,
    jobs: Sequence[Job],
    on_done: Callable[[Job, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Execute jobs on ``backend`` (in turn, in parallel or on Ray), reusing finished ones with --resume;
    ``on_done`` is called after each. Every run of a compare, trials and seeds included, goes through here."""
    records: dict[str, dict[str, Any]] = {}

    def done(job: Job, record: dict[str, Any]) -> None:
        records[job.name] = record
        status = "ok" if record.get("status") == "ok" else f"FAILED: {record.get('error')}"
        print(
            f"[{len(records)}/{len(jobs)}] {job.name}: {status} ({record.get('wall_seconds', 0):.0f} s)",
            flush=True,
        )
        if on_done is not None:
            on_done(job, record)

    to_run = []
    for job in jobs:
        record = _finished(job.run_dir, job.fingerprint) if settings.resume else None
        if record is None:
            to_run.append(job)
        else:
            print(f"{job.name}: already finished ({job.run_dir}), skipped (--resume)", flush=True)
            done(job, record)
    backend.run(to_run, functools.partial(run_job, settings), done)
    return [records[job.name] for job in jobs]


def _run_final(settings, backend: Backend, plan, runs: list[Job], meta, rows, files, start) -> None:
    from mcqtune.compare.evidence import table_rows

    order = [ZERO_SHOT, *plan["methods"]]
    run_rows: list[dict[str, Any]] = []

    def finished(job: Job, record: dict[str, Any]) -> None:
        row = build_row(job.row, record, job.run_dir, job.config)
        row["lr_tuned"] = job.row in (meta.get("tuning") or {}).get("methods", {})
        run_rows.append(row)
        rows[:] = table_rows(run_rows, order)
        meta["seconds"] = round(time.perf_counter() - start, 1)
        meta["runs"] = [{k: v for k, v in r.items() if k != ANSWERS} for r in run_rows]
        with contextlib.suppress(OSError):
            meta["machine"]["load_average_now"] = [round(x, 2) for x in os.getloadavg()]
        # Rewritten after every run: an interrupted compare still leaves a valid partial report.
        files.update(_write_outputs(settings, plan, rows, {**meta, "complete": len(run_rows) == len(runs)}))

    run_units(settings, backend, runs, finished)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mcqtune.compare.runner", description=__doc__)
    parser.add_argument("--worker", metavar="SPEC", help="internal: run one compare row from a spec file")
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main([args.worker])
    parser.error("use `mcqtune compare` (this entry point only runs workers)")
    return 2


if __name__ == "__main__":
    sys.exit(main())
