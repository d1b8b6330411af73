"""One data reference: what a data flag or YAML key (``--train``, ``--validation``, ``--data``,
``--eval-data``, ``data check FILE``) names, decided once.

:meth:`DataRef.parse` turns the text into one of:

- ``bundled``: a data set shipped in the package (``medmcqa``, ``arc_easy``) and its split;
- ``file``: a ``.jsonl`` / ``.csv`` / ``.parquet`` file;
- ``saved``: a directory written by ``datasets``' ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``);
- ``hub_dir``: a local directory laid out like a hub data set repository (data files, README ``configs:``);
- ``hub``: a Hugging Face hub id ``owner/name``, read with ``datasets.load_dataset`` (its cache).

``SOURCE:SPLIT`` names a split (``arc_easy:train``, ``./saved:dev``, ``owner/name:validation``). An
existing path always wins over every other reading. Every other module asks the reference for the
source's display name (:attr:`label`, :attr:`name`), what a run records (:meth:`record`) and the rows
(:meth:`load`); :func:`load_split` loads one with a train config's format, field map and bad-row rule.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mcqtune.data.bundled_sets import BUNDLED_DATASETS, bundled_key, bundled_path, bundled_split
from mcqtune.data.datasets_io import HUB, HUB_DIR, SAVED, directory_kind, open_table
from mcqtune.data.examples import LoadResult, MCQExample
from mcqtune.data.fields import FieldMap
from mcqtune.data.loading import load_examples
from mcqtune.errors import DataError

# The kinds of source; SAVED, HUB_DIR and HUB come through ``datasets`` (splits, a fingerprint).
BUNDLED, FILE = "bundled", "file"
log = logging.getLogger(__name__)

_DATA_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".parquet")
# owner/name as the hub spells it (letters, digits, '-', '_', '.'; no leading '.' or '-').
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


@dataclass(frozen=True)
class DataRef:
    """A data source as the user named it, with its kind, location and split.

    ``split`` is the bundled split (the default split unless ``SOURCE:SPLIT`` names one), the named
    split of a data set (None: the one it has), and None for a file. ``subset`` is a hub data set's
    configuration (``--subset``); other kinds ignore it. ``fingerprint`` is set on the reference a load
    returns, where ``datasets`` gives one.
    """

    text: str
    kind: str
    location: str  # the bundled key, the file or directory path, or the hub id
    split: str | None = None
    subset: str | None = None
    fingerprint: str | None = None

    @classmethod
    def parse(cls, text: str | Path, split: str = "validation", subset: str | None = None) -> DataRef:
        """What ``text`` names; ``split`` is the bundled split used when ``text`` names none."""
        text = str(text)
        found = _classify(text, split, None, subset)
        if found is not None:
            return found
        source, sep, named = text.rpartition(":")
        if sep and source and named and "/" not in named and "\\" not in named:
            found = _classify(source, split, named, subset, whole=text)
            if found is not None:
                return found
        raise _unknown(text)

    # ------------------------------------------------------------------------------ what it is

    @property
    def path(self) -> Path | None:
        """The file a bundled set or file reads, the directory of a saved or hub-layout data set."""
        if self.kind == BUNDLED:
            assert self.split is not None
            return bundled_path(self.location, self.split)
        if self.kind in (FILE, SAVED, HUB_DIR):
            return Path(self.location).expanduser()
        return None

    @property
    def is_file(self) -> bool:
        """Rows from one file (bundled or the user's), whose content hash a checkpoint keeps."""
        return self.kind in (BUNDLED, FILE)

    @property
    def label(self) -> str:
        """How printouts name it: ``arc_easy (validation)``, a file's path, ``owner/name (train)``."""
        if self.kind == FILE:
            return str(self.path)
        return f"{self.location} ({self.split})" if self.split else self.location

    @property
    def name(self) -> str:
        """A short name for progress lines and report columns: a bundled set's name (with its split when
        it is not the default one), a file's stem, a data set's location with its split."""
        if self.kind == BUNDLED:  # the split only when the text named one
            return f"{self.location}:{self.split}" if ":" in self.text else self.location
        if self.kind == FILE:
            return Path(self.location).stem
        where = self.location if self.kind == HUB else Path(self.location).name
        return f"{where}:{self.split}" if self.split else where

    def record(self) -> dict[str, Any]:
        """What a run directory and compare record about the source, so the run can be repeated."""
        out: dict[str, Any] = {"kind": self.kind, "source": self.location, "split": self.split}
        if self.kind == FILE:
            out["source"] = str(Path(self.location).expanduser())
        if self.subset is not None and self.kind in (HUB, HUB_DIR):
            out["subset"] = self.subset
        if self.fingerprint is not None:
            out["fingerprint"] = self.fingerprint
        return out

    def own_validation(self) -> str | None:
        """The validation set that goes with this training set: a bundled set's own validation split;
        None for anything else (the user names it: a data set's splits are its own)."""
        return self.location if self.kind == BUNDLED else None

    # -------------------------------------------------------------------------------- loading

    def open_source(self) -> Any:
        """The loader's source for these rows (``loading.open_source`` calls this)."""
        from mcqtune.data.loading import TableSource, open_source

        if self.is_file:
            source = open_source(self.path)
            source.record = self.record()
            return source
        table, split, fingerprint = open_table(self.kind, self.location, self.split, self.subset, self.label)
        resolved = self.resolved(split, fingerprint)
        return TableSource(table, resolved.label, resolved.stem, resolved.record())

    @property
    def stem(self) -> str:
        """The prefix of generated row ids."""
        base = Path(self.location).name if self.kind != HUB else self.location.rpartition("/")[2]
        return f"{base}-{self.split}" if self.split else base

    def load(
        self,
        format: str = "auto",
        field_map: FieldMap | None = None,
        *,
        on_bad_rows: str = "error",
        limit: int | None = None,
        require_answer: bool = True,
    ) -> LoadResult:
        """Validated examples, as ``load_examples`` gives them for a file; ``result.source`` is
        :meth:`record` with the split a data set resolved to and its fingerprint."""
        return load_examples(
            self,
            format,
            on_bad_rows=on_bad_rows,
            field_map=field_map,
            limit=limit,
            require_answer=require_answer,
        )

    def resolved(self, split: str | None, fingerprint: str | None) -> DataRef:
        return replace(self, split=split, fingerprint=fingerprint)

    def __str__(self) -> str:
        return self.label


def _classify(
    text: str, default_split: str, named: str | None, subset: str | None, whole: str | None = None
) -> DataRef | None:
    """The reference ``text`` makes with split ``named`` (None: none named), or None when it is none."""
    whole = whole or text
    p = Path(text).expanduser()
    if p.is_file():
        if named is not None:
            raise DataError(f"a data file has no splits; drop ':{named}'", file=text)
        return DataRef(whole, FILE, text)
    if p.is_dir():
        return DataRef(whole, directory_kind(p), text, named, subset)
    if p.exists():
        raise DataError("not a regular file or directory", file=text)
    key = bundled_key(text)
    if key is not None:
        split = named if named is not None else default_split
        bundled_path(key, split)  # an unknown split is an error now, naming the bundled splits
        return DataRef(whole, BUNDLED, key, bundled_split(split))
    if _HUB_ID.fullmatch(text) and not text.lower().endswith(_DATA_SUFFIXES):
        return DataRef(whole, HUB, text, named, subset)
    return None


def _unknown(text: str) -> DataError:
    p = Path(text).expanduser()
    looks_like_file = p.suffix.lower() in _DATA_SUFFIXES or "/" in text or "\\" in text
    if looks_like_file:
        return DataError("file not found", file=text)
    close = difflib.get_close_matches(text.strip().lower().replace("-", "_"), BUNDLED_DATASETS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return DataError(
        f"{text!r} is neither an existing file nor a bundled dataset ({', '.join(BUNDLED_DATASETS)}) "
        f"nor a dataset directory or hub id (owner/name){hint}"
    )


def data_refs(config: Any) -> tuple[DataRef, DataRef | None]:
    """A train config's training and validation sources (its ``subset`` applies to both)."""
    subset = getattr(config, "subset", None)
    train = DataRef.parse(config.train, "train", subset)
    validation = DataRef.parse(config.validation, "validation", subset) if config.validation else None
    return train, validation


def resolve_data(spec: str, split: str) -> Path | DataRef:
    """A ``--data`` value as something every loader reads: a file's path (a bundled set's file for a
    bundled name), else the data set's reference itself (``load_examples`` and ``check_file`` take it)."""
    ref = DataRef.parse(spec, split)
    if ref.is_file:
        assert ref.path is not None
        return ref.path
    return ref


def as_ref(source: DataRef | str | Path, split: str = "validation", subset: str | None = None) -> DataRef:
    return source if isinstance(source, DataRef) else DataRef.parse(source, split, subset)


def load_source(
    source: DataRef | str | Path, config: Any, limit: int | None, split: str = "validation"
) -> LoadResult:
    """One source read under a train config's format, field map and bad-row rule (``result.source``:
    what was read, for the run's records)."""
    ref = as_ref(source, split, getattr(config, "subset", None))
    result = ref.load(config.format, config.field_map(), on_bad_rows=config.on_bad_rows, limit=limit)
    if result.skipped:
        log.warning("%s: skipped %d bad rows (--on-bad-rows skip)", ref.label, result.skipped)
    return result


def load_split(
    source: DataRef | str | Path | None, config: Any, limit: int | None, split: str = "validation"
) -> tuple[list[MCQExample], int]:
    """Validated examples of one source (none for None) and how many bad rows were skipped."""
    if source is None:
        return [], 0
    result = load_source(source, config, limit, split)
    return result.examples, result.skipped
