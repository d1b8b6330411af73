"""``compare --tune lr``: each method's learning rate chosen on a dev split of the *training* data, through
the same Optuna engine as ``mcqtune search`` (:mod:`mcqtune.search.study`).

The dev split (:func:`mcqtune.compare.tuning.carve_dev_split`, seeded by the compare seed) never holds a
question of the validation data the final table is scored on, nor of a further ``--eval-data`` set. It
and the training rows left for the trials are written as plain JSONL files under ``OUTPUT/tune/``, so a
trial is an ordinary compare run (``runs/tune/<method>/lr<LR>-steps<N>``, executed by the runner's
``evaluate`` callback): any backend that runs compare runs runs trials. Each method's ``lr_grid`` (its
``configs/methods/<name>.yaml``) is one Optuna study (``OUTPUT/tune/optuna.db``, study
``compare-lr.<method>``), one trial per candidate: a trial trains about half the final step budget and
reports its dev accuracy every quarter of it to the pruner (median), which stops a candidate worse than
the median of the others at the same step. The best finished trial's dev accuracy picks the learning
rate (ties: the earlier candidate); the final runs then train on all the training rows with it.
``--resume`` keeps the studies and reuses their finished trials of the same config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcqtune.compare.tuning import carve_dev_split, write_jsonl

DEV_SIZE = 200  # dev rows carved from the training data (95% CI about +-7 points)
QUICK_DEV_SIZE = 24
TUNE_DIR = "tune"  # OUTPUT/tune/{dev_train,dev}.jsonl and OUTPUT/runs/tune/<method>/<trial>
DEV_TRAIN_FILE = "dev_train.jsonl"
DEV_FILE = "dev.jsonl"
STORAGE_FILE = "optuna.db"  # OUTPUT/tune/optuna.db: the tuning studies
STUDY_PREFIX = "compare-lr"
FAILED_SCORE = -1.0  # a failed or pruned trial ranks below every real dev accuracy


# A trial as the runner executes it: (run name, method, its TrainConfig, its Optuna trial link).
TrialSpec = tuple[str, str, Any, dict[str, Any]]
# Told as each trial finishes (so the pruner sees it at once): its index, record (status, error, ...)
# and dev accuracy (None unless it finished).
Done = Callable[[int, dict[str, Any], float | None], None]
# The runner's callback: run these trials, calling ``done`` for each as it finishes.
Evaluate = Callable[[list[TrialSpec], Done], None]


def dev_size(settings) -> int:
    return settings.dev_size or (QUICK_DEV_SIZE if settings.quick else DEV_SIZE)


def lr_candidates(method: str) -> list[float]:
    from mcqtune.config import method_lr_grid

    return method_lr_grid(method)


def halving_budgets(config) -> tuple[int, int]:
    """A trial's check interval and length: every quarter of the final runs' steps, for two checks (about
    half of them; exactly two checks, not a third one step after the second)."""
    from mcqtune.config import ConfigError

    if config.max_steps is None:
        raise ConfigError("--tune: trials are sized in steps; set --max-steps instead of --epochs")
    low = max(1, config.max_steps // 4)
    return low, max(low, min(2 * low, config.max_steps // 2))


def trial_steps(config, candidates: int) -> list[int]:
    """The steps of every trial for ``candidates`` candidates, at most (for estimates: the pruner only
    shortens a trial, and which ones depends on the scores)."""
    return [halving_budgets(config)[1]] * candidates


def trial_checks(config) -> int:
    """Dev evaluations of one full trial: every check (not step 0: trial_config) and the final evaluation,
    counted although the last check's scores serve it when that check is the best."""
    low, high = halving_budgets(config)
    return len(set(range(low, high + 1, low)) | {high}) + 1


def carve_dev_files(zero, held_out_sets: list[list[Any]], size: int, folder: Path) -> tuple[dict, Path, Path]:
    """Carve the seeded dev split from ``zero``'s training rows (no question of its validation rows or of
    ``held_out_sets``), write it and the trial rows as JSONL in ``folder``; return what a report says
    about it and the two files. The same inputs always give the same files (a search's workers agree)."""
    from mcqtune.config import ConfigError
    from mcqtune.data import load_split

    train, _ = load_split(zero.train, zero, zero.train_limit, "train")
    held_out, _ = load_split(zero.validation, zero, None)
    for rows in held_out_sets:  # every --eval-data row, not only the scored ones
        held_out += rows
    try:
        split = carve_dev_split(train, size, seed=zero.seed, held_out=held_out)
    except ValueError as exc:
        raise ConfigError(f"--dev-size {size}: {exc}") from None
    dev_train, dev = folder / DEV_TRAIN_FILE, folder / DEV_FILE
    write_jsonl(dev_train, split.train)
    write_jsonl(dev, split.dev)
    info = {
        "size": len(split.dev),
        "seed": split.seed,
        "train_rows": len(split.train),
        "excluded_overlaps": split.excluded_overlaps,
        "dev_file": str(dev),
        "dev_ids": [e.id for e in split.dev],
    }
    return info, dev_train, dev


def trial_config(config, dev_train: Path, dev: Path, steps: int, every: int, **changes: Any):
    """``config`` as a trial: trained on the trial rows for ``steps`` steps, checked on the whole dev split
    every ``every`` steps (what the pruner sees; not at step 0) and finally scored there; ``changes``: the
    tried values."""
    return dataclasses.replace(
        config,
        train=str(dev_train),
        validation=str(dev),
        format="jsonl",  # write_jsonl's layout; the user's field flags (and subset) applied when carving
        subset=None,
        fields={},
        answer_base=None,
        strip_query_prefix=False,
        train_limit=None,
        max_steps=steps,
        epochs=None,
        max_train_seconds=None,
        eval_steps=every,
        validate_at_start=False,  # the untrained model's dev score: the same in every trial, never pruned on
        eval_limit=None,
        final_eval_limit=None,
        save_steps=None,
        output=None,
        **changes,
    )


def _studies(settings, methods: list[str], low: dict[str, int], high: dict[str, int]) -> dict[str, Any]:
    """One study per method in OUTPUT/tune/optuna.db; a fresh one unless --resume."""
    import optuna

    from mcqtune.search.study import DEFAULT_PRUNER, make_pruner, open_storage, quiet_optuna

    quiet_optuna()
    url = storage_url(settings)
    storage = open_storage(url, heartbeat=False)
    studies = {}
    for m in methods:
        name = f"{STUDY_PREFIX}.{m}"
        if not settings.resume and name in {s.study_name for s in storage.get_all_studies()}:
            optuna.delete_study(study_name=name, storage=storage)
        studies[m] = optuna.create_study(
            study_name=name,
            storage=storage,
            direction="maximize",
            pruner=make_pruner(DEFAULT_PRUNER, low[m], high[m]),
            load_if_exists=True,
        )
    return studies


def storage_url(settings) -> str:
    from mcqtune.search.study import SQLITE_PREFIX

    return SQLITE_PREFIX + str((Path(settings.output) / TUNE_DIR / STORAGE_FILE).resolve())


def tune_learning_rates(settings, plan: dict[str, Any], evaluate: Evaluate) -> dict[str, Any]:
    """Every method's lr grid as Optuna trials on the dev split, all handed to ``evaluate`` at once (it
    runs them wherever the runner runs runs; each reports its checks to its study, and is told finished
    as soon as it is, so the pruner compares the next with it); set each method's config to the best
    learning rate."""
    import optuna

    from mcqtune.search.study import DEFAULT_PRUNER, pruner_spec, trial_link

    folder = Path(settings.output) / TUNE_DIR
    dev_info, dev_train, dev = carve_dev_files(
        plan["zero_shot"], list(plan["eval_sets"].values()), dev_size(settings), folder
    )
    print(
        f"tuning lr: dev split of {dev_info['size']} training rows (seed {dev_info['seed']}; "
        f"{dev_info['excluded_overlaps']} training rows repeating a held-out question kept out of it); "
        f"trials train on the other {dev_info['train_rows']}",
        flush=True,
    )
    configs, methods = plan["configs"], plan["methods"]
    budgets = {m: halving_budgets(configs[m]) for m in methods}
    studies = _studies(
        settings, methods, {m: b[0] for m, b in budgets.items()}, {m: b[1] for m, b in budgets.items()}
    )
    url = storage_url(settings)
    grids = {m: lr_candidates(m) for m in methods}
    trials: dict[str, dict[float, Any]] = {m: {} for m in methods}  # method -> lr -> trial
    specs: list[TrialSpec] = []
    asked: list[tuple[str, float, Any]] = []
    for m in methods:
        low, high = budgets[m]
        for lr in grids[m]:
            config = trial_config(configs[m], dev_train, dev, high, low, lr=lr)
            name = f"{TUNE_DIR}/{m}/lr{lr:g}-steps{high}"
            reused = _finished_trial(studies[m], lr, config) if settings.resume else None
            if reused is not None:
                trials[m][lr] = reused
                continue
            studies[m].enqueue_trial({"lr": lr}, user_attrs={"config": _config_key(config)})
            trial = studies[m].ask()
            trial.suggest_categorical("lr", grids[m])
            link = trial_link(
                url, studies[m].study_name, trial._trial_id, pruner_spec(DEFAULT_PRUNER, low, high)
            )
            specs.append((name, m, config, link))
            asked.append((m, lr, trial))

    def done(index: int, record: dict[str, Any], accuracy: float | None) -> None:
        m, lr, trial = asked[index]
        trial.set_user_attr("run_status", record.get("status"))
        if record.get("status") == "ok" and accuracy is not None:
            trials[m][lr] = studies[m].tell(trial, accuracy)
        elif record.get("status") == "pruned":
            trials[m][lr] = studies[m].tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            trial.set_user_attr("error", record.get("error"))
            trials[m][lr] = studies[m].tell(trial, state=optuna.trial.TrialState.FAIL)

    if specs:
        evaluate(specs, done)
    return {"what": "lr", "dev": dev_info, "storage": url, "methods": _choose(configs, grids, trials)}


def _choose(configs: dict[str, Any], grids: dict[str, list[float]], trials: dict[str, dict]) -> dict:
    """The best finished trial's rate per method (set into ``configs``), and every trial's dev scores."""
    from optuna.trial import TrialState

    methods = {}
    for m, grid in grids.items():

        def score(lr: float, m: str = m) -> float:
            trial = trials[m][lr]
            return trial.value if trial.state == TrialState.COMPLETE else FAILED_SCORE

        chosen = max(grid, key=lambda lr: (score(lr), -grid.index(lr)))
        configs[m] = dataclasses.replace(configs[m], lr=chosen)
        methods[m] = {
            "grid": grid,
            "chosen": chosen,
            "trials": [
                {
                    "lr": lr,
                    "state": trials[m][lr].state.name.lower(),
                    "dev_accuracy": dict(sorted(trials[m][lr].intermediate_values.items())),
                }
                for lr in grid
            ],
            "failed_trials": [
                f"lr {lr:g}: {trials[m][lr].user_attrs.get('error')}"
                for lr in grid
                if trials[m][lr].state == TrialState.FAIL
            ],
        }
        print(
            f"tuning lr: {m} -> {chosen:g} (dev accuracy by trial step: {methods[m]['trials']})", flush=True
        )
    return methods


def _config_key(config) -> str:
    """What a reused trial must have been run with: its whole config."""
    blob = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _finished_trial(study, lr: float, config):
    """--resume: a finished (complete or pruned) trial of this rate made with this very config."""
    from optuna.trial import TrialState

    key = _config_key(config)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if trial.params.get("lr") == lr and trial.user_attrs.get("config") == key:
            return trial
    return None
