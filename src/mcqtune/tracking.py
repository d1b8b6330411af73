"""Experiment tracking: a run's settings, curves and results in the trackers users already watch
(``--report-to tensorboard,mlflow,wandb``), through each library's own API, never a format written here.

- TensorBoard: event files in ``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR``), written with
  ``torch.utils.tensorboard.SummaryWriter``.
- MLflow: a run in ``MLFLOW_TRACKING_URI`` (MLflow's own default where unset, named on stderr), experiment
  ``MLFLOW_EXPERIMENT_NAME`` or ``mcqtune``; the artifact and ``metrics.json`` are logged as run artifacts.
- W&B: ``wandb.init`` with W&B's own environment (``WANDB_MODE=offline`` works without a network).

The tracker runs' ids are kept in ``RUN_DIR/tracking.json``, so a resumed run continues the same tracker
run instead of starting a new one. The trackers are an optional extra: asking for one that is not
installed is one line naming the extra.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mcqtune.errors import ConfigError

TRACKERS = ("tensorboard", "mlflow", "wandb")
NONE = "none"
EXTRA = "pip install 'mcqtune[tracking]'"
STATE_FILE = "tracking.json"
TENSORBOARD_DIR = "tensorboard"
DEFAULT_EXPERIMENT = "mcqtune"
# The module each tracker needs, and what it is called on PyPI.
_MODULES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}


def parse_report_to(value: str | Iterable[str] | None, where: str = "--report-to") -> tuple[str, ...]:
    """``"tensorboard,mlflow"`` (or a YAML list) -> ("tensorboard", "mlflow"); "none" or empty -> ()."""
    if value is None:
        return ()
    names = value.split(",") if isinstance(value, str) else list(value)
    chosen = tuple(dict.fromkeys(n.strip().lower() for n in names if n and n.strip()))
    if chosen in ((), (NONE,)):
        return ()
    unknown = [n for n in chosen if n not in TRACKERS]
    if unknown:
        raise ConfigError(
            f"{where}: unknown tracker(s) {', '.join(unknown)}; choose from {', '.join(TRACKERS)} or none"
        )
    return chosen


def per_run_trackers(names: tuple[str, ...]) -> str | None:
    """What each run of a compare reports to itself: its TensorBoard curves in its own run directory
    (``tensorboard --logdir OUTPUT`` shows them all); MLflow and W&B runs are compare's own."""
    return "tensorboard" if "tensorboard" in names else None


def check_installed(names: Iterable[str]) -> None:
    """One line naming the extra when a requested tracker's library is missing (before any work)."""
    import importlib.util

    missing = [name for name in names if importlib.util.find_spec(_MODULES[name][0]) is None]
    if missing:
        raise ConfigError(f"--report-to {','.join(missing)}: not installed; {EXTRA}")


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``method_options.r`` keys with scalar values (lists joined), as trackers want."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = ",".join(map(str, value))
        else:
            flat[name] = "none" if value is None else value
    return flat


def history_metrics(entry: dict[str, Any]) -> dict[str, float]:
    """One training-history entry as tracker metrics: the step's loss and learning rate, or a validation
    check's accuracy with its 95% Wilson interval."""
    if "val_accuracy" in entry:
        from mcqtune.evaluation.metrics import wilson_interval

        accuracy, n = entry["val_accuracy"], entry.get("val_n") or 0
        low, high = wilson_interval(round(accuracy * n), n) if n else (accuracy, accuracy)
        return {"val/accuracy": accuracy, "val/ci_low": low, "val/ci_high": high}
    return {f"train/{key}": entry[key] for key in ("loss", "lr") if entry.get(key) is not None}


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of a finished run's metrics.json worth a tracker's summary."""
    out: dict[str, float] = {}
    validation = metrics.get("validation") or {}
    for key in ("accuracy", "majority_baseline", "n"):
        if isinstance(validation.get(key), int | float):
            out[f"final/{key}"] = validation[key]
    interval = validation.get("ci95")
    if isinstance(interval, list | tuple) and len(interval) == 2:
        out["final/ci_low"], out["final/ci_high"] = interval
    train = metrics.get("train") or {}
    for key in ("seconds", "tokens_per_second", "final_loss", "steps"):
        if isinstance(train.get(key), int | float):
            out[f"final/train_{key}"] = train[key]
    parameters = metrics.get("parameters") or {}
    if isinstance(parameters.get("trainable"), int):
        out["final/trainable_parameters"] = parameters["trainable"]
    return out


class Trackers:
    """The trackers of one run (train's, or compare's parent run); every call is a no-op without any."""

    def __init__(self, names: tuple[str, ...], run_dir: Path, run_name: str, state: dict[str, Any]):
        self.names, self.run_dir, self.run_name, self.state = names, run_dir, run_name, state
        self._tensorboard = None
        self._mlflow_run = None
        self._wandb_run = None
        self.finished = False

    @classmethod
    def open(
        cls,
        names: tuple[str, ...],
        run_dir: Path,
        params: dict[str, Any],
        *,
        run_name: str,
        resume: bool,
        start_step: int = 0,
    ) -> Trackers:
        """Start (or, resuming, continue) a tracker run per name and log ``params``."""
        check_installed(names)
        state_path = run_dir / STATE_FILE
        state = json.loads(state_path.read_text()) if resume and state_path.is_file() else {}
        trackers = cls(names, run_dir, run_name, state)
        if "tensorboard" in names:
            trackers._open_tensorboard(params, start_step)
        if "mlflow" in names:
            trackers._open_mlflow(params)
        if "wandb" in names:
            trackers._open_wandb(params)
        if names:
            from mcqtune.atomic import atomic_write_json

            atomic_write_json(state_path, trackers.state)
        return trackers

    def _open_tensorboard(self, params: dict[str, Any], start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run drops the events logged after its checkpoint, so no step is doubled.
        self._tensorboard = SummaryWriter(
            log_dir=str(self.run_dir / TENSORBOARD_DIR), purge_step=start_step or None
        )
        if not start_step:
            text = "\n".join(f"    {k}: {v}" for k, v in flatten(params).items())
            self._tensorboard.add_text("config", text, 0)

    def _open_mlflow(self, params: dict[str, Any]) -> None:
        import mlflow

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            print(
                f"mlflow: no MLFLOW_TRACKING_URI set; logging to {mlflow.get_tracking_uri()}", file=sys.stderr
            )
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
        run_id = self.state.get("mlflow_run_id")
        tags = (
            {"mlflow.parentRunId": self.state["mlflow_parent_run_id"]}
            if "mlflow_parent_run_id" in self.state
            else None
        )
        self._mlflow_run = mlflow.start_run(
            run_id=run_id, run_name=None if run_id else self.run_name, tags=tags
        )
        self.state["mlflow_run_id"] = self._mlflow_run.info.run_id
        self.state["mlflow_tracking_uri"] = mlflow.get_tracking_uri()
        if not run_id:
            mlflow.log_params({k: str(v)[:6000] for k, v in flatten(params).items()})

    def _open_wandb(self, params: dict[str, Any]) -> None:
        import wandb

        run_id = self.state.get("wandb_run_id")
        self._wandb_run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_EXPERIMENT,
            name=self.run_name,
            id=run_id,
            resume="allow" if run_id else None,
            dir=str(self.run_dir),
            config=flatten(params),
        )
        self.state["wandb_run_id"] = self._wandb_run.id

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not metrics:
            return
        if self._tensorboard is not None:
            for key, value in metrics.items():
                self._tensorboard.add_scalar(key, value, step)
        if self._mlflow_run is not None:
            import mlflow

            mlflow.log_metrics({k.replace("/", "_"): float(v) for k, v in metrics.items()}, step=step)
        if self._wandb_run is not None:
            self._wandb_run.log(metrics, step=step)

    def log_history(self, entry: dict[str, Any]) -> None:
        """One entry of the run's history (a step's loss and lr, or a validation check)."""
        self.log(history_metrics(entry), entry["step"])

    def finish(
        self, metrics: dict[str, Any] | None, artifacts: Iterable[Path] = (), status: str = "FINISHED"
    ) -> None:
        """The final numbers and files, then each tracker run closed with ``status`` (FINISHED, KILLED,
        FAILED: an interrupted run is continued by --resume)."""
        if self.finished:
            return
        self.finished = True
        if metrics:
            summary = final_metrics(metrics)
            step = int((metrics.get("train") or {}).get("steps") or 0)
            self.log(summary, step)
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._mlflow_run is not None:
            import mlflow

            for path in artifacts:
                if path.is_dir():
                    mlflow.log_artifacts(str(path), artifact_path=path.name)
                elif path.is_file():
                    mlflow.log_artifact(str(path))
            mlflow.end_run(status=status)
        if self._wandb_run is not None:
            if metrics:
                self._wandb_run.summary.update(final_metrics(metrics))
            self._wandb_run.finish(exit_code=0 if status == "FINISHED" else 1)


@contextmanager
def tracked_run(
    report_to: str | None, run_dir: Path, params: dict[str, Any], *, resume: bool, start_step: int, main: bool
) -> Iterator[Trackers]:
    """One training run's trackers (only the main process of a launch reports); a run that raises
    (Ctrl-C: KILLED, to be continued by --resume; anything else: FAILED) closes its tracker runs so."""
    names = parse_report_to(report_to) if main else ()
    trackers = Trackers.open(
        names, run_dir, params, run_name=run_dir.name, resume=resume, start_step=start_step
    )
    try:
        yield trackers
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "TrainingInterrupted"
        trackers.finish(None, status="KILLED" if interrupted else "FAILED")
        raise
    trackers.finish(None)


# A compare row's numbers, as each child run's metrics.
_ROW_METRICS = (
    "accuracy",
    "ci95_low",
    "ci95_high",
    "majority_baseline",
    "trainable_params",
    "train_seconds",
    "peak_memory_bytes",
    "artifact_bytes",
)


def track_compare(
    names: tuple[str, ...],
    output: Path,
    params: dict[str, Any],
    rows: list[dict[str, Any]],
    files: Iterable[Path] = (),
) -> None:
    """compare's (or search's) runs: one parent run (its settings, the report as artifacts) and one child
    run per row (a method and seed, or a search trial: ``row["name"]``) with its accuracy, CI, trainable
    parameters, time and memory and its training curve. Children already logged (a resumed compare, a
    continued search) are not logged again."""
    if not names:
        return
    kind = "search" if rows and "name" in rows[0] else "compare"
    parent = Trackers.open(names, output, params, run_name=f"{kind} {output.name}", resume=True)
    children = parent.state.setdefault("children", {})
    for row in rows:
        key = row.get("name") or f"{row['method']}-seed{row.get('seed')}"
        if key in children or row.get("status") != "ok":
            continue
        children[key] = _log_child(parent, key, row)
    from mcqtune.atomic import atomic_write_json

    atomic_write_json(output / STATE_FILE, parent.state)
    parent.finish(None, files)


def _log_child(parent: Trackers, key: str, row: dict[str, Any]) -> dict[str, Any]:
    """One compare row as a child run of each tracker; returns the child runs' ids."""
    metrics = {f"compare/{name}": float(row[name]) for name in _ROW_METRICS if row.get(name) is not None}
    curve = _run_history(row)
    ids: dict[str, Any] = {}
    if parent._mlflow_run is not None:
        ids["mlflow_run_id"] = _mlflow_child(parent, key, row, metrics, curve)
    if parent._tensorboard is not None:
        for name, value in metrics.items():
            parent._tensorboard.add_scalar(f"{key}/{name}", value, 0)
    if "wandb" in parent.names:
        import wandb

        child = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_EXPERIMENT,
            group=parent.run_name,
            name=key,
            dir=str(parent.run_dir),
            config=flatten({"method": row["method"], "seed": row.get("seed")}),
            reinit="create_new",
        )
        for entry in curve:
            child.log(history_metrics(entry), step=entry["step"])
        child.summary.update(metrics)
        child.finish()
        ids["wandb_run_id"] = child.id
    return ids


def _mlflow_child(
    parent: Trackers, key: str, row: dict[str, Any], metrics: dict[str, float], curve: list[dict[str, Any]]
) -> str:
    import time

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    parent_run = parent._mlflow_run.info
    run = client.create_run(
        parent_run.experiment_id, tags={"mlflow.parentRunId": parent_run.run_id}, run_name=key
    )
    now = int(time.time() * 1000)
    fields = {name: row[name] for name in ("method", "seed", "lr", "scoring", "run_dir") if name in row}
    params = [Param(k, str(v)[:6000]) for k, v in flatten({**fields, **(row.get("params") or {})}).items()]
    points = [Metric(k.replace("/", "_"), v, now, 0) for k, v in metrics.items()]
    for entry in curve:
        points += [
            Metric(k.replace("/", "_"), v, now, entry["step"]) for k, v in history_metrics(entry).items()
        ]
    for start in range(0, len(points), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(
            run.info.run_id, metrics=points[start : start + 1000], params=params if not start else []
        )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _run_history(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The training history a compare row's run directory recorded (empty for zero-shot)."""
    path = Path(row.get("run_dir") or "") / "metrics.json"
    if not row.get("run_dir") or not path.is_file():
        return []
    return list(json.loads(path.read_text()).get("history") or [])
