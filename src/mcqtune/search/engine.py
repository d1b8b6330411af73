"""``mcqtune search``: the best settings of each PEFT method for the user's data, found by Optuna.

Each method is one Optuna study (``STUDY.<method>``) in one storage (SQLite in the output directory by
default). A trial draws the method's settings from its search space (:mod:`mcqtune.search.space`), trains
on the training rows minus a seeded dev split that never holds a validation question (compare's rule,
:func:`mcqtune.compare.trials.carve_dev_files`), and reports its dev accuracy at every validation check
to the pruner from its own worker process (:mod:`mcqtune.search.study`). Time, peak memory and trainable
parameters are kept as the trial's user attributes; a trial that fails (out of memory, a combination the
method refuses) is recorded as failed with its reason and the search goes on.

``--trials N`` is the number of trials the search should hold, spread evenly over the methods: each
round starts a trial of the method furthest below its share, counting the trials every process has
started, so a re-run tops the studies up and several processes on one storage share the work (each
may start one trial more than the share when two ask at the same moment). ``--timeout`` stops starting
trials after that many seconds.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from pathlib import Path
from typing import Any

from mcqtune import tracking
from mcqtune.compare.plan import DEFAULT_BUDGET, QUICK_BUDGET, CompareSettings, make_job, parse_methods
from mcqtune.config import ConfigError, apply_overrides, build_config
from mcqtune.search.settings import BEST_DIR, SearchSettings
from mcqtune.search.space import SearchSpace, load_spaces
from mcqtune.search.study import (
    FAIL_REASON,
    make_pruner,
    make_sampler,
    open_storage,
    pruner_spec,
    quiet_optuna,
    trial_link,
)

DEV_DIR = "dev"  # OUTPUT/dev/{dev_train,dev}.jsonl
TRIALS_DIR = "trials"  # OUTPUT/trials/<study>.<method>/trial-<number>: each trial's ordinary run directory
TRAIN = "train"


class TrialFailed(Exception):
    """A trial that could not run or finish: recorded as failed, the search goes on."""


@dataclasses.dataclass
class SearchPlan:
    methods: list[str]
    spaces: dict[str, SearchSpace]
    configs: dict[
        str, Any
    ]  # method -> its resolved TrainConfig on the user's data (best/<method>.yaml's base)
    dev_info: dict[str, Any]
    dev_train: Path
    dev: Path
    trackers: tuple[str, ...] = ()  # --report-to: the search's parent run and a child per trial

    def best_config(self, method: str, params: dict[str, Any]):
        """What best/<method>.yaml holds: the method's config on the user's data with a trial's values."""
        return apply_overrides(self.configs[method], self.spaces[method].overrides(params), "search space")


def plan_search(settings: SearchSettings) -> SearchPlan:
    """Resolve every method's config and search space, and write the dev split (user errors surface
    here, before any trial)."""
    from mcqtune.compare.plan import _check_methods, default_methods
    from mcqtune.compare.trials import DEV_SIZE, QUICK_DEV_SIZE, carve_dev_files

    methods = parse_methods(settings.methods) or default_methods()
    _check_methods(methods)
    spaces = load_spaces(methods, settings.space)
    budget = QUICK_BUDGET if settings.quick else DEFAULT_BUDGET
    configs = {}
    for method in methods:
        flags = {**settings.overrides, **settings.data_fields, "method": method}
        flags["output"] = str(settings.output / BEST_DIR / f"{method}-run")
        configs[method] = build_config(flags, settings.config, defaults=budget)
    zero = configs[methods[0]]
    trackers = tracking.parse_report_to(zero.report_to)
    tracking.check_installed(trackers)
    if zero.validation is None:
        raise ConfigError(
            f"--data {zero.train}: a data file has no implicit validation split; pass --validation"
        )
    if zero.max_steps is None:
        raise ConfigError("search: trials are sized in steps; set --max-steps instead of --epochs")
    size = settings.dev_size or (QUICK_DEV_SIZE if settings.quick else DEV_SIZE)
    folder = settings.output / DEV_DIR
    folder.mkdir(parents=True, exist_ok=True)
    info, dev_train, dev = carve_dev_files(zero, [], size, folder)
    return SearchPlan(methods, spaces, configs, info, dev_train, dev, trackers)


def open_studies(settings: SearchSettings, plan: SearchPlan) -> dict[str, Any]:
    """Each method's study, created or continued; a study made on another dev split is an error (its
    trials were scored on other rows)."""
    import optuna

    quiet_optuna()
    storage = open_storage(settings.storage_url)
    studies = {}
    for method in plan.methods:
        config = plan.configs[method]
        study = optuna.create_study(
            study_name=f"{settings.study}.{method}",
            storage=storage,
            direction="maximize",
            pruner=make_pruner(settings.pruner, config.eval_steps, config.max_steps),
            load_if_exists=True,
        )
        dev_ids = study.user_attrs.get("dev_ids")
        if dev_ids is None:
            study.set_user_attr("dev_ids", plan.dev_info["dev_ids"])
            study.set_user_attr("method", method)
        elif dev_ids != plan.dev_info["dev_ids"]:
            raise ConfigError(
                f"study {study.study_name} in {settings.storage_url} was searched on another dev split "
                "(other data, seed or --dev-size); use the same settings or another --study"
            )
        studies[method] = study
    return studies


def _trial_config(plan: SearchPlan, method: str, values: dict[str, Any], run_dir: Path):
    """The trial's TrainConfig: the method's config with the drawn values, trained on the trial rows and
    checked on the dev split; a value the method refuses fails the trial."""
    from mcqtune.compare.trials import trial_config

    base = plan.configs[method]
    try:
        config = apply_overrides(base, plan.spaces[method].overrides(values), "search space")
        config.validate("search space")
    except ConfigError as exc:
        raise TrialFailed(f"bad combination: {exc}") from None
    config = trial_config(config, plan.dev_train, plan.dev, base.max_steps, base.eval_steps)
    # each trial keeps its own TensorBoard curves; MLflow and W&B get the search's parent and children
    own = tracking.per_run_trackers(plan.trackers)
    return dataclasses.replace(config, output=str(run_dir), report_to=own)


def _describe(values: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={show(v)}" for k, v in values.items())


def _objective(settings: SearchSettings, plan: SearchPlan, method: str, study, seed: int):
    from mcqtune.compare.launch import _run_worker
    from mcqtune.compare.run_row import build_row

    compare = CompareSettings(
        output=settings.output, echo=not settings.quiet, worker_args=settings.worker_args
    )
    url = settings.storage_url
    config0 = plan.configs[method]
    link_pruner = pruner_spec(settings.pruner, config0.eval_steps, config0.max_steps)

    def objective(trial) -> float:
        import optuna

        study.sampler = make_sampler(seed + trial.number)  # reseeded per trial: workers draw apart
        values = plan.spaces[method].sample(trial)
        trial.set_user_attr("method", method)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        run_dir = settings.output / TRIALS_DIR / study.study_name / f"trial-{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir))
        print(f"trial {trial.number} [{method}] {_describe(values)}: training...", flush=True)
        start = time.perf_counter()
        try:
            config = _trial_config(plan, method, values, run_dir)
        except TrialFailed as exc:
            _finish(trial, method, values, "failed", None, time.perf_counter() - start, str(exc))
            trial.set_user_attr(FAIL_REASON, str(exc))
            raise
        name = f"{study.study_name}/trial-{trial.number}"
        job = make_job(compare, name, method, TRAIN, config.to_dict())
        job = dataclasses.replace(
            job, run_dir=run_dir, trial_link=trial_link(url, study.study_name, trial._trial_id, link_pruner)
        )
        record = _run_worker(compare, job)
        row = build_row(method, record, run_dir, job.config)
        for key in (
            "trainable_params",
            "total_params",
            "train_seconds",
            "peak_memory_bytes",
            "peak_memory_kind",
            "steps",
            "artifact_bytes",
        ):
            if row.get(key) is not None:
                trial.set_user_attr(key, row[key])
        trial.set_user_attr("wall_seconds", record.get("wall_seconds"))
        seconds = time.perf_counter() - start
        status = record.get("status")
        if status == "pruned":
            last = max(
                trial.storage.get_trial(trial._trial_id).intermediate_values.items(), default=(0, None)
            )
            _finish(trial, method, values, f"pruned at step {last[0]}", last[1], seconds)
            raise optuna.TrialPruned(record.get("error"))
        if status != "ok" or row["accuracy"] is None:
            error = record.get("error") or "no dev accuracy"
            trial.set_user_attr(FAIL_REASON, error)
            _finish(trial, method, values, "failed", None, seconds, error)
            raise TrialFailed(error)
        _finish(trial, method, values, "complete", row["accuracy"], seconds)
        return row["accuracy"]

    return objective


def _finish(
    trial, method: str, values: dict[str, Any], state: str, accuracy, seconds: float, error=None
) -> None:
    """The progress line of a finished trial: method, settings, dev accuracy, pruned or not, time."""
    dev = f"dev {accuracy * 100:.1f}%" if accuracy is not None else "no dev accuracy"
    why = f": {error}" if error else ""
    print(
        f"trial {trial.number} [{method}] {_describe(values)}: {dev}, {state}{why} ({seconds:.0f} s)",
        flush=True,
    )


def _next_method(studies: dict[str, Any], targets: dict[str, int]) -> str | None:
    """The method furthest below its share of --trials (every process's trials counted); None when
    every study holds its share."""
    missing = {m: targets[m] - len(study.get_trials(deepcopy=False)) for m, study in studies.items()}
    method = max(studies, key=lambda m: missing[m])  # ties: the first method listed
    return method if missing[method] > 0 else None


def _track(settings: SearchSettings, plan: SearchPlan, results: dict[str, Any]) -> None:
    """--report-to: one parent run for the search, a child run per finished trial (dev accuracy as its
    accuracy, its settings, parameters, time, memory and training curve)."""
    from mcqtune.search.report import REPORT_HTML, REPORT_MD, RESULTS_FILE

    rows = [
        {
            "name": f"{t['method']}-trial{t['number']}",
            "method": t["method"],
            "status": "ok" if t["state"] == "complete" else t["state"],
            "accuracy": t["dev_accuracy"],
            "trainable_params": t["trainable_params"],
            "train_seconds": t["train_seconds"],
            "peak_memory_bytes": t["peak_memory_bytes"],
            "run_dir": t["run_dir"],
            "params": t["params"],
        }
        for t in results["trials"]
    ]
    params = {"command": settings.command, "methods": plan.methods, **results["budget"]}
    files = [settings.output / name for name in (REPORT_HTML, REPORT_MD, RESULTS_FILE)]
    tracking.track_compare(plan.trackers, settings.output, params, rows, [f for f in files if f.is_file()])


def run_search(settings: SearchSettings) -> dict[str, Any]:
    """Run trials until the studies hold --trials (or --timeout passes), then write the report; returns
    the results written to ``search.json``."""
    from mcqtune.search.report import write_report

    start = time.perf_counter()
    settings.output.mkdir(parents=True, exist_ok=True)
    plan = plan_search(settings)
    studies = open_studies(settings, plan)
    targets = settings.target_trials(plan.methods)
    print(
        f"search: {', '.join(plan.methods)} in {settings.storage_url} (study {settings.study}.<method>), "
        f"{sum(targets.values())} trials in all; dev split of {plan.dev_info['size']} training rows "
        f"(seed {plan.dev_info['seed']}), trials train on the other {plan.dev_info['train_rows']}",
        flush=True,
    )
    ran = 0
    seed = plan.configs[plan.methods[0]].seed
    while (method := _next_method(studies, targets)) is not None:
        if settings.timeout is not None and time.perf_counter() - start >= settings.timeout:
            print(f"search: --timeout {settings.timeout:g} s reached; not starting more trials", flush=True)
            break
        study = studies[method]
        study.optimize(
            _objective(settings, plan, method, study, seed),
            n_trials=1,
            catch=(TrialFailed,),
            gc_after_trial=True,
        )
        ran += 1
    results = write_report(settings, plan, studies)
    _track(settings, plan, results)
    print(
        f"search: {ran} trial(s) run here in {(time.perf_counter() - start) / 60:.1f} min; "
        f"report: {settings.output / 'report.html'}",
        flush=True,
    )
    return results
