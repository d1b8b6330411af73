"""What a `compare` will run, decided before anything runs: its settings, every method's resolved
TrainConfig (same budget for all, user errors raised before an hour of training), the jobs and their
``--resume`` fingerprints, and how long it will take.

Budget: default <= 60 min, ``--quick`` <= 10 min on an idle 2-core CPU (bundled SmolLM2-135M,
ARC-Easy, ranking objective = cloze scoring, batch 4, bf16 autocast).

Default: 150 steps x batch 4 (600 questions seen, a third of ARC-Easy train); learning curve at steps
0/50/100/150 on 64 validation questions; final evaluation on all 500 validation questions (95% CI
about +-4 points, enough to separate methods ~8 points apart): ~21 min, a third of the 60-minute
budget, which leaves room for a slower laptop or a busy machine.

``--quick``: 16 steps, curve at 0/8/16 on 24 questions, final evaluation on 64 questions: ~4 min.
Its CIs are +-12 points: ``--quick`` checks the pipeline, it does not pick a method.
``--permutations cyclic`` scores the final set 4 more times (~+10 min for the default budget).

Measured with the default run itself (``mcqtune compare --output runs/compare``, 2026-11-28, idle
2-vCPU AMD EPYC with AVX-512-bf16, 2 threads): 21.1 min in all. Each method carries its own training
seconds per step (``metrics.json``: ``train.seconds`` / 150) and final-evaluation seconds per question
(1 / its questions/s) as ``Method.step_seconds`` and ``Method.eval_seconds_per_question``; the whole
worker's wall time (start-up, step-0 and curve evaluations, training, final evaluation on 500
questions) was: zero-shot 29 s, full 191 s, subset 96 s, adapter 155 s, prefix 330 s (unpacked
scoring), lora 197 s, qlora 231 s. :func:`estimate_seconds` applies the per-method numbers and
``compare`` prints the estimate before it starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcqtune import tracking
from mcqtune.compare.backends import Execution, Job
from mcqtune.compare.evidence import ZERO_SHOT
from mcqtune.compare.warm import DEFAULT_WORKER_ARGS
from mcqtune.config import TAG_SHARED, TAG_ZERO_SHOT, keys_tagged

RUNS_DIR = "runs"  # OUTPUT/runs/<method>: one ordinary `train` run directory per row
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
# estimate_seconds: the imports, paid once by the fork server workers start from (mcqtune.compare.warm),
# and each worker's own start-up (the fork, loading the model) before it trains or scores.
WORKER_IMPORT_SECONDS = 6.0
WORKER_START_SECONDS = 2.0

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
    from_search: str | None = (
        None  # a `mcqtune search` output: each method's config is its best/<method>.yaml
    )
    seeds: int = 1  # final runs per method, seeds seed, seed+1, ...
    eval_data: list[str] = field(default_factory=list)  # further data sets every row is scored on
    time_budget: float | None = None  # seconds of training per method (--budget time=...); None: steps
    echo: bool = True
    command: str | None = None
    # How a worker is started: [python, *worker_args, SPEC]. Tests inject a plug-in-registering script.
    worker_args: list[str] = field(default_factory=lambda: list(DEFAULT_WORKER_ARGS))
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
    """How reports name a further data set (``DataRef.name``: a bundled name, a file's stem, a data
    set with its split)."""
    from mcqtune.data import DataRef

    return DataRef.parse(ref, "validation").name


def plan_configs(settings: CompareSettings) -> dict[str, Any]:
    """Resolve every method's TrainConfig (user errors surface here, before an hour of training)."""
    from mcqtune.config import ConfigError, build_config

    searched = searched_configs(settings)
    methods = settings.methods or list(searched) or default_methods()
    _check_methods(methods)
    missing = [m for m in methods if searched and m not in searched]
    if missing:
        raise ConfigError(
            f"--from-search {settings.from_search}: no best/<method>.yaml for {', '.join(missing)}"
        )
    budget = QUICK_BUDGET if settings.quick else DEFAULT_BUDGET
    runs = settings.output / RUNS_DIR
    if settings.seeds < 1:
        raise ConfigError(f"--seeds must be a positive integer, got {settings.seeds}")
    if settings.tune is not None and settings.tune not in TUNE_CHOICES:
        raise ConfigError(f"--tune: one of {', '.join(TUNE_CHOICES)}, got {settings.tune!r}")

    def resolve(method: str, name: str):
        given = {**settings.overrides, **settings.data_fields, "max_train_seconds": settings.time_budget}
        flags = {**given, "method": method, "output": str(runs / name)}
        config = build_config(flags, searched.get(method, settings.config_file), defaults=budget)
        ceiling = time_budget_steps(config)
        if not ceiling:
            return config
        # as many learning-curve points as under the step budget
        every = max(1, round(ceiling * config.eval_steps / config.max_steps))
        return dataclasses.replace(config, max_steps=ceiling, eval_steps=every)

    configs = {method: resolve(method, method) for method in methods}
    # Zero-shot: the same evaluation keys; the method only picks which defaults file is read.
    zero = resolve(methods[0], ZERO_SHOT)
    trackers = tracking.parse_report_to(zero.report_to)
    tracking.check_installed(trackers)
    # Each run keeps its own TensorBoard curves; MLflow and W&B get compare's parent and child runs.
    own = tracking.per_run_trackers(trackers)
    configs = {m: dataclasses.replace(c, report_to=own) for m, c in configs.items()}
    zero = dataclasses.replace(zero, report_to=None)
    if zero.validation is None:
        raise ConfigError(
            f"--data {zero.train}: only a bundled data set has an implicit validation split; "
            "pass --validation"
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
    return {
        "methods": methods,
        "configs": configs,
        "zero_shot": zero,
        "eval_sets": eval_sets,
        "trackers": trackers,
    }


def searched_configs(settings: CompareSettings) -> dict[str, str]:
    """--from-search: method -> the search's best/<method>.yaml (the method's whole config: the search's
    budget and data, its best settings); empty without --from-search."""
    from mcqtune.config import ConfigError
    from mcqtune.search.settings import BEST_DIR

    if settings.from_search is None:
        return {}
    if settings.config_file or settings.tune:
        raise ConfigError("--from-search brings each method's config: drop --config and --tune")
    folder = Path(settings.from_search) / BEST_DIR
    found = {p.stem: str(p) for p in sorted(folder.glob("*.yaml"))}
    if not found:
        raise ConfigError(
            f"--from-search {settings.from_search}: no {folder}/<method>.yaml; run `mcqtune search "
            f"--output {settings.from_search}` first (a method gets one once a trial has finished)"
        )
    return found


def _load_rows(config, ref: str) -> list[Any]:
    from mcqtune.data import load_split

    return load_split(ref, config, None)[0]


def off_reference(config) -> str | None:
    """Why the measured per-method speeds (``Method.step_seconds``) do not apply to ``config``; None when
    they do. They were measured with the bundled model under bf16 autocast on a CPU with native bf16
    (AVX-512-bf16); a CPU without it trains in fp32, about 4x slower on an AVX2 EPYC (measured in the
    two-method compare of docs/EVALUATION.md), and a GPU is another machine altogether."""
    import torch

    from mcqtune.models import DEFAULT_MODEL, MODEL_ALIASES, resolve_precision

    if torch.cuda.is_available():
        return "the measured speeds are for a CPU, this machine has a GPU"
    if MODEL_ALIASES.get(config.model, config.model) != DEFAULT_MODEL:
        return "the measured speeds are for the bundled model"
    if resolve_precision(config.precision, torch.device("cpu")) != "bf16":
        return "the measured speeds are for bf16 on a CPU with native bf16; this run is fp32"
    return None


def seconds_per_step(config) -> float | None:
    """Measured training seconds per optimizer step of ``config``'s method and batch (None off the
    reference machine: bundled model, bf16 on an idle 2-core CPU, see :func:`off_reference`)."""
    from mcqtune.methods import get_method

    if off_reference(config):
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
    """Wall time of a compare with the bundled model on an idle 2-core CPU with native bf16; None for
    anything else (:func:`off_reference`).
    Counts every run: zero-shot, each method's seeds, and with --tune its trials (one per grid value,
    each run to its end: the pruner only shortens some of them)."""
    from mcqtune.compare import trials
    from mcqtune.data import load_split
    from mcqtune.methods import Method, get_method

    zero = plan["zero_shot"]
    if off_reference(zero):
        return None
    try:
        n_val = len(load_split(zero.validation, zero, None)[0])
    except Exception:  # the real run reports data problems properly
        return None
    final = min(zero.final_eval_limit or n_val, n_val)
    scored_final = final * (5 if settings.permutations else 1)  # + cyclic orders of 4 options
    limit = zero.final_eval_limit
    scored_final += sum(min(len(rows), limit or len(rows)) for rows in plan["eval_sets"].values())
    # zero-shot: the base model alone scores at the rate of a method that adds nothing to it
    total = WORKER_IMPORT_SECONDS + WORKER_START_SECONDS + Method.eval_seconds_per_question * scored_final
    for name, config in plan["configs"].items():
        method = get_method(name)
        questions = curve_points(config.max_steps, config.eval_steps) * min(config.eval_limit or n_val, n_val)
        training = seconds_per_step(config) * config.max_steps
        one_run = (
            WORKER_START_SECONDS + training + method.eval_seconds_per_question * (questions + scored_final)
        )
        total += one_run * settings.seeds
        if settings.tune:  # every trial run to its end: the pruner only shortens some
            dev = trials.dev_size(settings)
            for steps in trials.trial_steps(config, len(trials.lr_candidates(name))):
                total += WORKER_START_SECONDS + seconds_per_step(config) * steps
                total += method.eval_seconds_per_question * dev * trials.trial_checks(config)
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
