"""The data sets shipped in the package (``data/bundled/NAME/SPLIT.jsonl``), so demos and tests run
offline: their names, splits and files."""

from __future__ import annotations

from pathlib import Path

from mcqtune.errors import DataError

BUNDLED_DATASETS = ("medmcqa", "arc_easy")
SPLITS = ("train", "validation")
BUNDLED_DIR = Path(__file__).parent / "bundled"

_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}


def bundled_key(name: str) -> str | None:
    """The bundled dataset a name refers to (case and - vs _ do not matter), else None."""
    key = name.strip().lower().replace("-", "_")
    return key if key in BUNDLED_DATASETS else None


def bundled_split(split: str) -> str:
    """A bundled split's own name (``dev``, ``val`` -> ``validation``; case does not matter)."""
    return _SPLIT_ALIASES.get(split.strip().lower(), split.strip().lower())


def bundled_path(name: str, split: str) -> Path:
    """Path of a dataset shipped in the package, so demos and tests run offline."""
    key = bundled_key(name)
    if key is None:
        raise DataError(f"unknown bundled dataset {name!r}; bundled: {', '.join(BUNDLED_DATASETS)}")
    split_key = bundled_split(split)
    if split_key not in SPLITS:
        raise DataError(f"unknown split {split!r} for bundled {key}; choose one of: {', '.join(SPLITS)}")
    path = BUNDLED_DIR / key / f"{split_key}.jsonl"
    if not path.is_file():
        raise DataError("bundled data file is missing from the installation", file=str(path))
    return path
