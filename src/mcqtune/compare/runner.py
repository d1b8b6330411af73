"""`mcqtune compare`: train every method under the same budget and tell the user which one to use.

Every method gets the same data, seed, optimizer steps x batch size (so the same number of training
examples seen), the same validation subset for the learning curves and the same final evaluation set;
only each method's own defaults (learning rate, rank, bottleneck size...) from
``configs/methods/<name>.yaml`` differ. A zero-shot row (the base model, no training, same scoring on
the same evaluation set) is the bar every method must clear.

Each method trains in a fresh subprocess (:mod:`mcqtune.compare.worker`) that calls
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
learning-rate trials of :mod:`mcqtune.compare.trials`, rung by rung. :mod:`mcqtune.compare.evidence`
folds the runs into table rows (mean +- spread, paired tests against the best, ``--eval-data`` transfer
columns). ``--budget time=5m`` gives every method the same seconds of training instead of the same steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcqtune.artifacts import MANIFEST, METRICS
from mcqtune.atomic import atomic_write_json, atomic_write_text
from mcqtune.compare.backends import (
    CHECKPOINT_GRACE_SECONDS,
    RUN_RECORD,
    Backend,
    Job,
    open_backend,
)
from mcqtune.compare.evidence import ANSWERS, IN_DOMAIN, ZERO_SHOT
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
from mcqtune.evaluation.metrics import PER_QUESTION

log = logging.getLogger(__name__)
RUN_LOG = "compare.log"
RUN_SPEC = "compare_spec.json"
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
        data_sources=metrics.get("sources"),  # each source with its split and fingerprint
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
            "source": scores.get("source"),
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
