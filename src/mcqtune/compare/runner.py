"""`mcqtune compare`: train every method under the same budget and tell the user which one to use.

Every method gets the same data, seed, optimizer steps x batch size (so the same number of training
examples seen), the same validation subset for the learning curves and the same final evaluation set;
only each method's own defaults (learning rate, rank, bottleneck size...) from
``configs/methods/<name>.yaml`` differ. A zero-shot row (the base model, no training, same scoring on
the same evaluation set) is the bar every method must clear.

Each method trains in its own process (:mod:`mcqtune.compare.worker`, started by
:mod:`mcqtune.compare.launch`, forked from a process that has imported the libraries once:
:mod:`mcqtune.compare.warm`) that calls
:func:`mcqtune.training.recipe.train` and writes ``compare_run.json`` into its run directory: status,
wall time and its own peak memory (``ru_maxrss`` of that process on CPU,
``torch.cuda.max_memory_allocated`` on GPU). So peaks are per method, and a method that crashes or is
killed (out of memory: SIGKILL) is recorded as a failed row without stopping the others. ``--resume``
skips methods whose run directory already holds a successful record made with the same resolved config.
Run directories are ordinary ``train`` outputs, usable by ``mcqtune eval/predict --adapter
DIR/runs/<method>``.

:mod:`mcqtune.compare.plan` resolves every method's config, the budgets (default <= 60 min,
``--quick`` <= 10 min on an idle 2-core CPU) and the duration estimate before anything runs.

Every unit of work is a :class:`~mcqtune.compare.backends.Job` (one training run or the zero-shot
evaluation, and its evaluations) executed by :func:`run_units` on a backend (in turn, ``--parallel K``,
``--backend ray``): the final runs (``--seeds N``: N per method), and with ``--tune lr`` the
learning-rate trials of :mod:`mcqtune.compare.trials`, rung by rung. Each run becomes a row
(:mod:`mcqtune.compare.run_row`); :mod:`mcqtune.compare.evidence` folds the runs into table rows
(mean +- spread, paired tests against the best, ``--eval-data`` transfer columns). ``--budget time=5m``
gives every method the same seconds of training instead of the same steps. The files are written by
:mod:`mcqtune.compare.report` and :mod:`mcqtune.compare.plots`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcqtune import tracking
from mcqtune.atomic import atomic_write_json, atomic_write_text
from mcqtune.compare.backends import Backend, Job, open_backend
from mcqtune.compare.evidence import ANSWERS, ZERO_SHOT
from mcqtune.compare.launch import finished_record, run_job
from mcqtune.compare.machine import library_versions, machine_info
from mcqtune.compare.plan import (
    RUNS_DIR,
    SHARED_KEYS,
    TRAIN,
    CompareSettings,
    estimate_seconds,
    eval_set_name,
    make_job,
    off_reference,
    plan_configs,
)
from mcqtune.compare.run_row import build_row

log = logging.getLogger(__name__)
PLAN_FILE = "compare_plan.json"
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"


@dataclass
class CompareResult:
    output: Path
    rows: list[dict[str, Any]]
    files: dict[str, Path]
    seconds: float


def _write_outputs(
    settings: CompareSettings, plan: dict[str, Any], rows: list[dict[str, Any]], meta: dict[str, Any]
) -> dict[str, Path]:
    from mcqtune.compare import report as compare_report
    from mcqtune.compare.plots import write_plots

    results = {**meta, "rows": rows}
    out = settings.output
    atomic_write_json(out / RESULTS_JSON, results)
    compare_report.write_csv(out / RESULTS_CSV, rows)
    atomic_write_text(out / REPORT_MD, compare_report.markdown_report(results))
    plots = write_plots(out, rows, meta)
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
    reason = off_reference(plan["zero_shot"])
    if estimate is not None:
        duration = f"; about {estimate / 60:.0f} min on an idle 2-core CPU"
    else:
        duration = f"; no duration estimate: {reason}" if reason else ""
    print(
        f"compare: zero-shot + {len(methods)} method(s) x {settings.seeds} seed(s)"
        + (f", tuning {settings.tune} first" if settings.tune else "")
        + duration,
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
                settings, plan, lambda specs, done: _run_trials(settings, backend, specs, done)
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
    tracking.track_compare(
        plan["trackers"],
        settings.output,
        {"command": settings.command, "methods": methods, "seeds": settings.seeds, **shared},
        rows,
        [
            settings.output / name
            for name in (REPORT_HTML, REPORT_MD, RESULTS_JSON)
            if (settings.output / name).is_file()
        ],
    )
    print(f"compare finished in {elapsed / 60:.1f} min; report: {settings.output / REPORT_HTML}", flush=True)
    return CompareResult(settings.output, rows, files, elapsed)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def _run_trials(settings: CompareSettings, backend: Backend, specs: list[Any], done: Callable) -> None:
    """Tuning trials as ordinary runs, each reporting its checks to its Optuna trial; ``done(index,
    record, dev accuracy)`` as each finishes (accuracy None unless it finished). A trial is scored on its
    dev split only: no further sets (--eval-data), no permutations."""
    dev_only = dataclasses.replace(settings, eval_data=[], permutations=None)
    jobs = []
    for name, method, config, link in specs:
        output = str(settings.output / RUNS_DIR / name)
        job = make_job(dev_only, name, method, TRAIN, dataclasses.replace(config, output=output).to_dict())
        jobs.append(dataclasses.replace(job, trial_link=link))
    index = {job.name: i for i, job in enumerate(jobs)}

    def finished(job: Job, record: dict[str, Any]) -> None:
        done(index[job.name], record, build_row(job.row, record, job.run_dir, job.config)["accuracy"])

    run_units(settings, backend, jobs, finished)


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
        status = record.get("status")
        if status not in ("ok", "pruned"):
            status = f"FAILED: {record.get('error')}"
        elif status == "pruned":
            status = record.get("error") or status  # "pruned at step N: ..."
        print(
            f"[{len(records)}/{len(jobs)}] {job.name}: {status} ({record.get('wall_seconds', 0):.0f} s)",
            flush=True,
        )
        if on_done is not None:
            on_done(job, record)

    to_run = []
    for job in jobs:
        record = finished_record(job.run_dir, job.fingerprint) if settings.resume else None
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
