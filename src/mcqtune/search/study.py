"""The Optuna side of a trial, shared by ``mcqtune search`` and ``compare --tune lr``: the storage (an RDB
URL, SQLite by default), the pruner, the sampler, and the hook a trial's worker process uses to report
each validation check to its trial and stop when the pruner says so.

A trial runs in its own process (:mod:`mcqtune.compare.worker`, like every compare run): its peak memory
is its own, and a crash or an out-of-memory kill fails that trial, not the search. The worker opens the
study in the same storage (``optuna.trial.Trial(study, trial_id)``) and reports there, so the pruner
sees every process's trials: the parent only creates the trial and records its result.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

PRUNERS = ("median", "halving", "hyperband", "none")
DEFAULT_PRUNER = "median"
MEDIAN_STARTUP_TRIALS = 2  # a median of fewer finished trials says little; they run to the end
SQLITE_BUSY_SECONDS = 60  # several processes write one SQLite file: wait for its lock, do not fail
HEARTBEAT_SECONDS = 30  # a trial whose process died stops beating; after the grace period it is failed
HEARTBEAT_GRACE_SECONDS = 120
FAIL_REASON = "error"  # user attribute: why a trial failed
SQLITE_PREFIX = "sqlite:///"
STORAGE_ATTEMPTS = 4  # opening a storage another process is creating: retried after 1, 2, 3 s


def quiet_optuna() -> None:
    """Optuna logs every trial (a failed one with its traceback) and warns that its matplotlib plots are
    experimental: mcqtune prints its own line per trial, the failure's reason included."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def open_storage(url: str, heartbeat: bool = True) -> optuna.storages.RDBStorage:
    """An RDB storage with, for SQLite, a lock timeout long enough for several writers; ``heartbeat``
    (for ``study.optimize``): a trial of a killed process is failed by the next process that runs the
    study (``compare --tune`` asks and tells its trials itself and starts afresh or reuses them)."""
    import optuna

    engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}} if url.startswith("sqlite") else {}
    beat = (
        {"heartbeat_interval": HEARTBEAT_SECONDS, "grace_period": HEARTBEAT_GRACE_SECONDS}
        if heartbeat
        else {}
    )
    for attempt in range(1, STORAGE_ATTEMPTS + 1):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **beat)
        except Exception as exc:  # a bad URL, a missing database driver, an unreachable server
            # Two processes creating a new database at once: the second's schema insert collides with
            # the first's (IntegrityError) or waits on its lock; once the first is done it opens.
            if attempt < STORAGE_ATTEMPTS and type(exc).__name__ in ("IntegrityError", "OperationalError"):
                time.sleep(attempt)
                continue
            from mcqtune.errors import ConfigError

            raise ConfigError(f"--storage {url}: cannot open it: {type(exc).__name__}: {exc}") from None
    raise AssertionError("unreachable")


def make_pruner(name: str, min_steps: int, max_steps: int) -> optuna.pruners.BasePruner:
    """``median``: stop a trial whose dev accuracy at a check is below the median of earlier trials at
    that check (after :data:`MEDIAN_STARTUP_TRIALS` trials); ``halving``: asynchronous successive
    halving from ``min_steps``; ``hyperband``: several halving brackets; ``none``: every trial runs."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_steps, reduction_factor=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_steps, max_resource=max_steps)
    if name == "none":
        return optuna.pruners.NopPruner()
    from mcqtune.errors import ConfigError

    raise ConfigError(f"--pruner: one of {', '.join(PRUNERS)}, got {name!r}")


def make_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """TPE seeded per trial (seed + trial number): reproducible, and two processes sharing a study do
    not draw the same settings."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed)


def pruner_spec(name: str, min_steps: int, max_steps: int) -> dict[str, Any]:
    """What a worker needs to rebuild the pruner (a pruner is not kept in the storage)."""
    return {"name": name, "min_steps": min_steps, "max_steps": max_steps}


def trial_link(storage: str, study: str, trial_id: int, pruner: dict[str, Any]) -> dict[str, Any]:
    """The part of a worker's spec that ties its run to an Optuna trial."""
    return {"storage": storage, "study": study, "trial_id": trial_id, "pruner": pruner}


def reporting_hook(link: dict[str, Any], max_steps: int) -> Callable[[int, dict[str, Any]], None]:
    """In the worker: a ``train(on_validation=...)`` callback that reports every check after step 0 to
    the trial and raises ``optuna.TrialPruned`` when the pruner stops it (never at the last step: the
    run is finished by then)."""
    import optuna

    quiet_optuna()
    pruner = make_pruner(**link["pruner"])
    storage = open_storage(link["storage"], heartbeat=False)  # the parent process beats for the trial
    study = optuna.load_study(study_name=link["study"], storage=storage, pruner=pruner)
    trial = optuna.trial.Trial(study, link["trial_id"])

    def report(step: int, metrics: dict[str, Any]) -> None:
        if step <= 0:
            return
        trial.report(metrics["accuracy"], step)
        if step < max_steps and trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned at step {step}: dev accuracy {metrics['accuracy'] * 100:.1f}% on {metrics['n']} rows"
            )

    return report


def pruned_exception() -> type[BaseException]:
    import optuna

    return optuna.TrialPruned


def state_name(trial: optuna.trial.FrozenTrial) -> str:
    return trial.state.name.lower()
