"""``compare --tune lr``: each method's learning rate chosen on a dev split of the *training* data.

The dev split (:func:`mcqtune.compare.tuning.carve_dev_split`, seeded by the compare seed) never holds a
question of the validation data the final table is scored on, nor of a further ``--eval-data`` set. It
and the training rows left for the trials are written as plain JSONL files under ``OUTPUT/tune/``, so a
trial is an ordinary compare run (``runs/tune/<method>/lr<LR>-steps<N>``, executed by the runner's
``evaluate`` callback): any backend that runs compare runs runs trials, ``--resume`` skips finished
ones. Each method's ``lr_grid`` (its ``configs/methods/<name>.yaml``) races by successive halving: every
candidate trains a quarter of the final step budget, the better half twice as long, and so on up to
half the budget; the dev accuracy of the last rung picks the learning rate. The final runs then train
on all the training rows with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcqtune.compare.tuning import Halving, carve_dev_split, write_jsonl

DEV_SIZE = 200  # dev rows carved from the training data (95% CI about +-7 points)
QUICK_DEV_SIZE = 24
TUNE_DIR = "tune"  # OUTPUT/tune/{dev_train,dev}.jsonl and OUTPUT/runs/tune/<method>/<trial>
DEV_TRAIN_FILE = "dev_train.jsonl"
DEV_FILE = "dev.jsonl"
# A trial validates only at its end (on the dev split), so its learning-curve evaluations (step 0 and
# the last step, which train() always runs) use a single row: there is no best step to choose.
TRIAL_CURVE_ROWS = 1
FAILED_SCORE = -1.0  # a failed trial ranks below every real dev accuracy


# A trial as the runner executes it: (run name, method, its TrainConfig without an output directory).
TrialSpec = tuple[str, str, Any]
# The runner's callback: run these trials, return each one's dev accuracy (None: failed) and error.
Evaluate = Callable[[list[TrialSpec]], list[tuple[float | None, str | None]]]


def dev_size(settings) -> int:
    return settings.dev_size or (QUICK_DEV_SIZE if settings.quick else DEV_SIZE)


def lr_candidates(method: str) -> list[float]:
    from mcqtune.config import method_lr_grid

    return method_lr_grid(method)


def halving_budgets(config) -> tuple[int, int]:
    """Trial steps: from a quarter of the final runs' steps up to half of them."""
    from mcqtune.config import ConfigError

    if config.max_steps is None:
        raise ConfigError("--tune: trials are sized in steps; set --max-steps instead of --epochs")
    low = max(1, config.max_steps // 4)
    return low, max(low, config.max_steps // 2)


def trial_steps(config, candidates: int) -> list[int]:
    """The steps of every trial the halving schedule runs for ``candidates`` candidates (for estimates:
    which candidates survive depends on the scores, how many trials of which length does not)."""
    halving = Halving(list(range(candidates)), *halving_budgets(config))
    steps: list[int] = []
    while (rung := halving.pending()) is not None:
        alive, budget = rung
        steps += [budget] * len(alive)
        halving.report([0.0] * len(alive))
    return steps


def _carve(settings, plan: dict[str, Any]) -> tuple[dict[str, Any], Path, Path]:
    """Write the dev split and the trials' training rows; return what the report says about them."""
    from mcqtune.config import ConfigError
    from mcqtune.data import load_split

    zero = plan["zero_shot"]
    train, _ = load_split(zero.train, zero, zero.train_limit, "train")
    held_out, _ = load_split(zero.validation, zero, None)
    for rows in plan["eval_sets"].values():  # every --eval-data row, not only the scored ones
        held_out += rows
    size = dev_size(settings)
    try:
        split = carve_dev_split(train, size, seed=zero.seed, held_out=held_out)
    except ValueError as exc:
        raise ConfigError(f"--dev-size {size}: {exc}") from None
    folder = settings.output / TUNE_DIR
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


def _trial(method: str, config, lr: float, steps: int, dev_train: Path, dev: Path) -> TrialSpec:
    name = f"{TUNE_DIR}/{method}/lr{lr:g}-steps{steps}"
    trial = dataclasses.replace(
        config,
        train=str(dev_train),
        validation=str(dev),
        format="jsonl",  # write_jsonl's layout; the user's field flags were applied when carving
        fields={},
        answer_base=None,
        strip_query_prefix=False,
        train_limit=None,
        max_steps=steps,
        max_train_seconds=None,
        eval_steps=steps,
        eval_limit=TRIAL_CURVE_ROWS,
        final_eval_limit=None,
        lr=lr,
        output=None,
    )
    return name, method, trial


def tune_learning_rates(settings, plan: dict[str, Any], evaluate: Evaluate) -> dict[str, Any]:
    """Race every method's lr grid on the dev split, rung by rung for all methods at once (``evaluate``
    runs a rung's trials, wherever the runner runs runs); set each method's config to its winner."""
    dev_info, dev_train, dev = _carve(settings, plan)
    print(
        f"tuning lr: dev split of {dev_info['size']} training rows (seed {dev_info['seed']}; "
        f"{dev_info['excluded_overlaps']} training rows repeating a held-out question kept out of it); "
        f"trials train on the other {dev_info['train_rows']}",
        flush=True,
    )
    configs = plan["configs"]
    races = {m: Halving(lr_candidates(m), *halving_budgets(configs[m])) for m in plan["methods"]}
    errors: dict[str, list[str]] = {m: [] for m in races}
    while rungs := {m: race.pending() for m, race in races.items() if not race.done}:
        specs = [
            _trial(m, configs[m], lr, steps, dev_train, dev)
            for m, (lrs, steps) in rungs.items()
            for lr in lrs
        ]
        results = iter(zip(specs, evaluate(specs), strict=True))
        for m, (lrs, _) in rungs.items():
            scores = []
            for _ in lrs:
                (name, _, _), (accuracy, error) = next(results)
                if accuracy is None:
                    errors[m].append(f"{name}: {error}")
                scores.append(FAILED_SCORE if accuracy is None else accuracy)
            races[m].report(scores)
    methods = {}
    for m, race in races.items():
        chosen = race.best
        configs[m] = dataclasses.replace(configs[m], lr=chosen)
        methods[m] = {
            "grid": lr_candidates(m),
            "chosen": chosen,
            "trials": [
                {
                    "lr": t.candidate,
                    "dev_accuracy": {s: (None if a == FAILED_SCORE else a) for s, a in t.scores.items()},
                }
                for t in race.trials
            ],
            "failed_trials": errors[m],
        }
        print(
            f"tuning lr: {m} -> {chosen:g} (dev accuracy by trial steps: {methods[m]['trials']})", flush=True
        )
    return {"what": "lr", "dev": dev_info, "methods": methods}
