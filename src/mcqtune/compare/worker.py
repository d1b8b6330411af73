"""One compare job in its own process (``python -m mcqtune.compare.worker SPEC``): train one run (or
evaluate the base model zero-shot), score it on the extra evaluations the compare asked for (option
permutations, further data sets), and write ``compare_run.json`` into its run directory: status, wall
and CPU time, and its own peak memory (``ru_maxrss`` of this process on CPU,
``torch.cuda.max_memory_allocated`` on GPU). A crash of any kind becomes a failed record, so the
parent (:mod:`mcqtune.compare.runner`) records a failed row and goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcqtune.artifacts import CONFIG_FILE, METRICS
from mcqtune.atomic import atomic_write_json
from mcqtune.compare.backends import RUN_RECORD
from mcqtune.compare.evidence import ZERO_SHOT
from mcqtune.compare.plan import eval_set_name
from mcqtune.progress import task

if TYPE_CHECKING:
    from mcqtune.evaluation.setup import EvalSetup
    from mcqtune.methods.base import Method


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
    """A final evaluation's prompt encoder, rows and setup: train()'s own (:class:`EvalSetup`), so the
    zero-shot row, the permutations and the further data sets are scored the way train() scores."""

    encoder: Any
    rows: list[Any]
    setup: EvalSetup
    source: dict[str, Any] | None = None  # what was read (DataRef.record), for the run's records


def _method_of(config, kind: str) -> Method | None:
    """The trained method, whose packing rule its scores follow; None for the untrained base model."""
    if kind == ZERO_SHOT:
        return None
    from mcqtune.methods import get_method

    return get_method(config.method)


def _eval_context(config, method: Method | None, tokenizer=None, data: str | None = None) -> _EvalContext:
    """The final evaluation's setup on the validation data, or on ``data`` (a further data set)."""
    from mcqtune.data import load_source
    from mcqtune.evaluation.setup import EvalSetup
    from mcqtune.models import default_device, load_tokenizer, resolve_model
    from mcqtune.prompt import PromptEncoder

    if tokenizer is None:
        tokenizer = load_tokenizer(resolve_model(config.model))
    setup = EvalSetup.of_run(config, method, default_device())
    loaded = load_source(data or config.validation, config, None)
    return _EvalContext(
        PromptEncoder(tokenizer, config.prompt_config()), setup.rows(loaded.examples), setup, loaded.source
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
    context = _eval_context(config, None, predictor.tokenizer)
    objective = resolve_objective(config.objective, model.num_parameters())
    scoring = OBJECTIVE_TO_SCORING[objective]
    name = eval_set_name(config.validation)
    with task(f"zero-shot validation ({name})"):
        scored = predictor.score(
            context.rows,
            scoring=scoring,
            prompt=context.encoder.config,
            packed=context.setup.packed,
            batch_size=context.setup.batch_size,
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
        "sources": {"validation": context.source},
        "history": [],
    }
    return metrics_file, model, scoring, context


# What a further data set's score keeps (compute_metrics' keys): enough for its column group and tests.
TRANSFER_KEYS = ("n", "accuracy", "ci95", "majority_baseline", "scoring")


def _score_further_sets(
    model, config, scoring: str, method: Method | None, eval_data: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, CI, majority baseline and per-question answers of ``model`` on each further data set
    (first ``final_eval_limit`` rows, read with the same format and field flags as the validation data)."""
    from mcqtune.evaluation.format import format_metrics
    from mcqtune.evaluation.metrics import PER_QUESTION, compute_metrics, per_question

    out: dict[str, Any] = {}
    for ref in eval_data:
        name = eval_set_name(ref)
        context = _eval_context(config, method, data=ref)
        with task(f"further data set ({name})"):
            scored = context.setup.score(model, context.encoder, context.rows, scoring)
        metrics = compute_metrics(scored)
        print(format_metrics(metrics, f"further data set {name} ({scoring} scoring):"), flush=True)
        out[name] = {k: metrics.get(k) for k in TRANSFER_KEYS} | {PER_QUESTION: per_question(scored)}
        out[name]["source"] = context.source
    return out


def _permutation_accuracy(
    model, config, context: _EvalContext | None, method: Method | None, scoring: str | None, mode: str | None
) -> dict[str, Any] | None:
    """Accuracy averaged over option orders on the final evaluation set (optional)."""
    if not mode or model is None or not scoring:
        return None
    from mcqtune.evaluation.analysis import score_permutations
    from mcqtune.evaluation.metrics import permutation_summary as summarise

    context = context or _eval_context(config, method)
    with task(f"permutations ({mode}, {eval_set_name(config.validation)})"):
        kwargs = context.setup.score_kwargs() | {"seed": config.seed}
        result = score_permutations(model, context.encoder, context.rows, scoring, mode, **kwargs)
    summary = summarise(result)
    print(
        f"permutation-averaged accuracy ({mode}): {summary.get('accuracy_mean', float('nan')) * 100:.1f}%",
        flush=True,
    )
    keys = ("mode", "n", "orders_per_question", "accuracy_mean", "accuracy_circular", "answer_changes_share")
    return {k: summary.get(k) for k in keys} | {"seconds": summary.get("seconds")}


def _train_one(config, resume: bool, on_validation=None):
    """train() in this process; with --resume, continue from the run's own checkpoint when it has one.
    Its progress reaches the log as a line every few seconds (stdout is a pipe, not a terminal).
    ``on_validation`` hears every validation check (a search trial reports them to its pruner)."""
    from mcqtune.training.api import train

    if on_validation is not None:  # a search trial: always from the start, reporting every check
        return train(config, keep_model=True, overwrite=True, on_validation=on_validation)
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
    from mcqtune.training.api import TrainResult
    from mcqtune.training.checkpoint import config_differences
    from mcqtune.training.trainer import run_precision

    run_precision(config)  # the saved config holds QLoRA's compute_dtype as it ran, not "auto"
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


def worker_main(argv: list[str], start: str = "fresh") -> int:
    """Child-process entry: train (or evaluate zero-shot) one row and write its record; ``start`` says how
    the process began ("fresh" interpreter or "forked" warm, :mod:`mcqtune.compare.warm`)."""
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    run_dir = Path(spec["run_dir"])
    kind = spec["kind"]
    from mcqtune.quiet import quiet_libraries

    quiet_libraries()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from mcqtune.config import TrainConfig

    record: dict[str, Any] = {
        "kind": kind,
        "method": spec["method"],
        "fingerprint": spec["fingerprint"],
        "start": start,
    }
    start = time.perf_counter()
    link = spec.get("trial_link")
    pruned: type[BaseException] = _NeverRaised
    if link is not None:
        from mcqtune.search.study import pruned_exception

        pruned = pruned_exception()
    try:
        config = TrainConfig(**spec["config"])
        config.validate("compare")
        method = _method_of(config, kind)
        if kind == ZERO_SHOT:
            metrics, model, scoring, context = _evaluate_zero_shot(config)
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / METRICS, metrics)
        else:
            hook = None
            if link is not None:
                from mcqtune.search.study import reporting_hook

                hook = reporting_hook(link, config.max_steps)
            result = _train_one(config, bool(spec.get("resume")), hook)
            model, context = result.model, None
            scoring = (result.metrics.get("validation") or {}).get("scoring")
        permutations = spec.get("permutations")
        permutation = _permutation_accuracy(model, config, context, method, scoring, permutations)
        if permutation is not None:
            record["permutation"] = permutation
        if spec.get("eval_data") and scoring:
            record["transfer"] = _score_further_sets(model, config, scoring, method, spec["eval_data"])
        record["status"] = "ok"
    except pruned as exc:  # a search trial its pruner stopped: not a failure
        record.update(status="pruned", error=str(exc))
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
    return 0 if record["status"] in ("ok", "pruned") else 1


class _NeverRaised(BaseException):
    """Stands for optuna.TrialPruned in a run that is not a search trial."""


def _describe_error(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "out of memory" in text.lower() or isinstance(exc, MemoryError):
        name = f"out of memory ({name})"
    return f"{name}: {text}"[:300] if text else name


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
