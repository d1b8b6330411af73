"""Data sets read through ``datasets``: a ``save_to_disk`` directory, a local directory laid out like a
hub repository, and a hub id (``owner/name``, with ``datasets``' own cache, offline mode and
``HF_TOKEN``).

Each gives one split as a ``datasets.Dataset``; its rows then go through the same layout detection,
field map and row checks as a file's (``loading.TableSource``). Split and subset choice and every
failure (no such split, several splits and none named, an uncached id offline, a private or gated set
without a token, no network) are one :class:`DataError` line naming the source.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mcqtune.errors import DataError

# The kinds of data set read here (``reference.DataRef.kind``).
SAVED, HUB_DIR, HUB = "saved", "hub_dir", "hub"
# What ``save_to_disk`` writes at the top of its directory: a DatasetDict, or a single Dataset.
SAVED_DICT_FILE = "dataset_dict.json"
SAVED_STATE_FILE = "state.json"
# Files ``load_dataset(directory)`` reads as data (its packaged builders), and a README's ``configs:``.
DATA_FILE_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".parquet", ".arrow", ".txt")
README = "README.md"
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_MAX_SCANNED_FILES = 10_000


def directory_kind(path: Path) -> str:
    """SAVED for a ``save_to_disk`` directory, HUB_DIR for one with data files; else an error."""
    if (path / SAVED_DICT_FILE).is_file() or (path / SAVED_STATE_FILE).is_file():
        return SAVED
    if (path / README).is_file() or _has_data_files(path):
        return HUB_DIR
    raise DataError(
        "is a directory with neither a saved data set (save_to_disk) nor data files "
        f"({', '.join(DATA_FILE_SUFFIXES[:4])}, ...); pass a data file, a data set directory or a hub id",
        file=str(path),
    )


def _has_data_files(path: Path) -> bool:
    for n, found in enumerate(path.rglob("*")):
        if n > _MAX_SCANNED_FILES:
            return False
        if found.is_file() and found.suffix.lower() in DATA_FILE_SUFFIXES:
            return True
    return False


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars, info logs or retry warnings from ``datasets`` and ``huggingface_hub`` while it
    reads: mcqtune prints its own lines, and a failure is one error line."""
    import datasets

    bars_were_on = not datasets.are_progress_bars_disabled()
    loggers = [logging.getLogger(name) for name in ("datasets", "huggingface_hub")]
    levels = [logger.level for logger in loggers]
    datasets.disable_progress_bars()
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if bars_were_on:
            datasets.enable_progress_bars()


def open_table(
    kind: str, location: str, split: str | None, subset: str | None, label: str
) -> tuple[Any, str | None, str | None]:
    """The rows of one split: ``(dataset, the split's name, the dataset's fingerprint)``."""
    with _quiet():
        if kind == SAVED:
            table, split = _open_saved(Path(location).expanduser(), split, label)
        else:
            table, split = _open_repository(location, subset, split, local=kind == HUB_DIR)
    return table, split, getattr(table, "_fingerprint", None)


def _pick_split(source: str, splits: list[str], split: str | None, subsets: list[str] | None = None) -> str:
    """The named split (it must exist), or the only one; several and none named is an error listing them."""
    if split is not None:
        if split in splits:
            return split
        close = difflib.get_close_matches(split, splits, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise DataError(f"no split '{split}'{hint}; its splits: {', '.join(splits)}", file=source)
    if len(splits) == 1:
        return splits[0]
    also = f" (subsets: {', '.join(subsets)}; pick one with --subset)" if subsets and len(subsets) > 1 else ""
    raise DataError(
        f"has several splits ({', '.join(splits)}); name one as {source}:SPLIT, e.g. {source}:{splits[0]}"
        f"{also}",
        file=source,
    )


def _open_saved(path: Path, split: str | None, label: str) -> tuple[Any, str | None]:
    import datasets

    try:
        saved = datasets.load_from_disk(str(path))
    except Exception as exc:  # a damaged or foreign directory is the user's to fix
        raise DataError(f"cannot read the saved data set: {type(exc).__name__}: {exc}", file=label) from None
    if isinstance(saved, datasets.DatasetDict):
        name = _pick_split(str(path), list(saved), split)
        return saved[name], name
    own = str(saved.split) if saved.split is not None else None
    if split is not None and split != own:
        raise DataError(
            f"holds one saved Dataset{f' (split {own})' if own else ''}, not a DatasetDict; drop ':{split}'",
            file=str(path),
        )
    return saved, own


def _subsets(location: str) -> list[str]:
    import datasets

    try:
        return list(datasets.get_dataset_config_names(location))
    except Exception:  # only used to make a message more helpful
        return []


def _open_repository(
    location: str, subset: str | None, split: str | None, *, local: bool
) -> tuple[Any, str | None]:
    """A hub id or a hub-layout directory, read with ``load_dataset`` (a directory with a throwaway cache:
    its files may change between runs and must never be served stale)."""
    import datasets

    try:
        if split is None:
            splits = list(datasets.get_dataset_split_names(location, subset))
            split = _pick_split(location, splits, None, _subsets(location))
        if local:
            with tempfile.TemporaryDirectory(prefix="mcqtune-dataset-") as cache:
                table = datasets.load_dataset(
                    location, subset, split=split, cache_dir=cache, keep_in_memory=True
                )
        else:
            table = datasets.load_dataset(location, subset, split=split)
    except DataError:
        raise
    except Exception as exc:
        raise _repository_error(location, subset, split, local, exc) from None
    return table, split


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _offline() -> bool:
    return any(
        os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE") for name in _OFFLINE_VARIABLES
    )


def _repository_error(
    location: str, subset: str | None, split: str | None, local: bool, exc: BaseException
) -> DataError:
    """One line for what went wrong reading a hub id or hub-layout directory, and what to do."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    text = str(exc)
    if "Unknown split" in text or "Bad split" in text:
        splits = _split_names(location, subset)
        if splits:
            return _pick_split_error(location, splits, split)
    if "Config name is missing" in text or ("BuilderConfig" in text and "not found" in text):
        subsets = _subsets(location)
        if subsets:
            what = f"no subset '{subset}'" if subset else "has several subsets and none was named"
            return DataError(f"{what}; its subsets: {', '.join(subsets)} (pass --subset NAME)", file=location)
    if local:
        return DataError(f"cannot read the data set directory: {_first_line(exc)}", file=location)
    causes = _causes(exc)
    if any(isinstance(c, GatedRepoError) for c in causes):
        return DataError(
            "is a gated data set on the Hugging Face hub: accept its terms on its hub page, then set "
            "HF_TOKEN to a token of that account (or run `hf auth login`)",
            file=location,
        )
    if _offline():
        return DataError(
            "is not in the local datasets cache and offline mode is on (HF_HUB_OFFLINE / "
            "HF_DATASETS_OFFLINE); load it once online, or pass a local file or saved data set",
            file=location,
        )
    if any(isinstance(c, RepositoryNotFoundError) for c in causes) or "doesn't exist on the Hub" in text:
        return DataError(
            "not found on the Hugging Face hub, nor a local path: check the id, or, for a private data set, "
            "set HF_TOKEN to a token that can read it",
            file=location,
        )
    if any(isinstance(c, ConnectionError | TimeoutError) for c in causes) or "Couldn't reach" in text:
        return DataError(
            f"cannot reach the Hugging Face hub ({_first_line(exc)}); check the network, or load it once "
            "online so the cache has it and set HF_HUB_OFFLINE=1",
            file=location,
        )
    return DataError(f"cannot load from the Hugging Face hub: {_first_line(exc)}", file=location)


def _split_names(location: str, subset: str | None) -> list[str]:
    import datasets

    try:
        return list(datasets.get_dataset_split_names(location, subset))
    except Exception:  # only used to make a message more helpful
        return []


def _pick_split_error(location: str, splits: list[str], split: str | None) -> DataError:
    try:
        _pick_split(location, splits, split)
    except DataError as exc:
        return exc
    return DataError(f"no split '{split}'", file=location)


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and the chain of causes and contexts behind it."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen
