"""What ``mcqtune search`` takes: every setting once, with its help, default and checks
(:func:`mcqtune.settings.setting`), read by the command line (``cli/search.py``) and the engine alike."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mcqtune.compare.warm import DEFAULT_WORKER_ARGS
from mcqtune.errors import ConfigError
from mcqtune.search.study import DEFAULT_PRUNER, PRUNERS
from mcqtune.settings import check_fields, flag_name, setting

TRIALS_PER_METHOD = 10  # default --trials: this many per method
QUICK_TRIALS_PER_METHOD = 2
DEFAULT_STUDY = "search"
STORAGE_FILE = "search.db"  # the default storage: sqlite:///OUTPUT/search.db
BEST_DIR = "best"  # OUTPUT/best/<method>.yaml: each method's best trial as a train config


def _dev_sizes() -> str:
    from mcqtune.compare.trials import DEV_SIZE, QUICK_DEV_SIZE

    return f"{DEV_SIZE}; --quick: {QUICK_DEV_SIZE}"


@dataclass
class SearchSettings:
    output: Path = setting(
        None,
        "directory for the study, the trials, the report and best/<method>.yaml",
        required=True,
        metavar="DIR",
    )
    methods: str | None = setting(
        None, "comma-separated methods to search", none_means="every registered method except the presets"
    )
    trials: int | None = setting(
        None,
        "trials the search should hold in all, spread evenly over the methods; running the command again "
        "tops the study up to this many",
        check="positive",
        none_means=f"{TRIALS_PER_METHOD} per method; --quick: {QUICK_TRIALS_PER_METHOD} per method",
        metavar="N",
    )
    timeout: float | None = setting(
        None,
        "stop starting trials after this many seconds",
        check="positive",
        none_means="no limit",
        metavar="SECONDS",
    )
    storage: str | None = setting(
        None,
        "Optuna storage URL (sqlite:///FILE, postgresql://USER:PASS@HOST/DB, ...); several processes "
        "pointed at one storage and study share the trials",
        none_means=f"sqlite:///OUTPUT/{STORAGE_FILE}",
        metavar="URL",
    )
    study: str = setting(
        DEFAULT_STUDY, "study name; each method is the study NAME.<method> in the storage", metavar="NAME"
    )
    space: str | None = setting(
        None,
        "YAML overriding the methods' search spaces: {method: {param: distribution or null}}",
        none_means="each method's own search: block (configs/methods/<name>.yaml)",
        metavar="FILE",
    )
    config: str | None = setting(
        None, "YAML with TrainConfig keys applied to every trial", none_means="none", metavar="FILE"
    )
    pruner: str = setting(DEFAULT_PRUNER, "stop bad trials early at a validation check", choices=PRUNERS)
    dev_size: int | None = setting(
        None,
        "training rows held out as the dev split trials are scored on (never a validation question)",
        check="positive",
        none_means=_dev_sizes,
        metavar="N",
    )
    quick: bool = setting(False, "a smoke run: compare's --quick budget, 2 trials per method")
    quiet: bool = setting(False, "only the per-trial lines, no trial log echo")
    # Not flags: filled by the command line.
    overrides: dict[str, Any] = setting(factory=dict, flag=False)
    data_fields: dict[str, Any] = setting(factory=dict, flag=False)
    command: str | None = setting(None, flag=False)
    worker_args: list[str] = field(default_factory=lambda: list(DEFAULT_WORKER_ARGS))

    def __post_init__(self) -> None:
        if self.output is None:
            raise ConfigError("search: --output is required")
        self.output = Path(self.output)
        check_fields(self, flag_name)

    @property
    def storage_url(self) -> str:
        from mcqtune.search.study import SQLITE_PREFIX

        return self.storage or SQLITE_PREFIX + str((self.output / STORAGE_FILE).resolve())

    def target_trials(self, methods: list[str]) -> dict[str, int]:
        """How many trials each method's study should hold: --trials spread evenly (the first methods
        get the remainder)."""
        per = QUICK_TRIALS_PER_METHOD if self.quick else TRIALS_PER_METHOD
        total = self.trials if self.trials is not None else per * len(methods)
        base, extra = divmod(total, len(methods))
        return {m: base + (1 if i < extra else 0) for i, m in enumerate(methods)}


def flag_keys() -> tuple[str, ...]:
    """The settings that are command-line flags, in order (the rest are filled by the command)."""
    return tuple(f.name for f in fields(SearchSettings) if f.metadata.get("flag", False))
