"""The field map: which column of a user's file holds each part of a question.

Every layout (``formats.py``) has its own field names; a :class:`FieldMap` given by the user
(``--field KEY=COLUMN``, ``--answer-base``, ``--strip-query-prefix``, or ``fields:`` / ``answer_base:`` /
``strip_query_prefix:`` in a train config) replaces just the names it sets. ``None`` means "the layout's
own name". The same map renders itself back as flags, so an error can print the exact command line that
loads a file.
"""

from __future__ import annotations

import dataclasses
import difflib
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mcqtune.data.examples import MAX_OPTIONS, MIN_OPTIONS
from mcqtune.errors import DataError

# The parts of a question a user may map to a column of their own.
FIELD_KEYS = ("question", "choices", "answer", "id", "subject")
# Answer columns recognised without a map (the field's own tools use these names), first one preferred.
ANSWER_FIELDS = ("answer", "answer_idx", "label", "gold", "answerKey", "target")
ANSWER_BASES = (0, 1)
FIELD_FLAG = "--field"
ANSWER_BASE_FLAG = "--answer-base"
STRIP_FLAG = "--strip-query-prefix"
# The train-config keys a field map is kept under (TrainConfig, a run's config.yaml).
FIELD_CONFIG_KEYS = ("fields", "answer_base", "strip_query_prefix")


@dataclass(frozen=True)
class FieldMap:
    """Where each part of a question is: a column name, or ``None`` for the layout's own name.

    ``choices`` is one field holding the options (a list, a JSON list in CSV, or a ``{letter: text}``
    object) or a tuple of columns, one option each. ``answer`` holds an index (``answer_base`` 0 or 1;
    ``None``: the layout's convention, else told from the data), a letter A-J, or an option's text.
    ``strip_query_prefix`` drops a leading ``Question:`` and a trailing ``Answer:`` from the question,
    as lm-evaluation-harness style queries carry them.
    """

    question: str | None = None
    choices: str | tuple[str, ...] | None = None
    answer: str | None = None
    answer_base: int | None = None
    id: str | None = None
    subject: str | None = None
    strip_query_prefix: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.choices, list):
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.answer_base is not None and self.answer_base not in ANSWER_BASES:
            raise DataError(f"field map: answer_base must be 0 or 1, got {self.answer_base!r}")
        if isinstance(self.choices, tuple) and not MIN_OPTIONS <= len(self.choices) <= MAX_OPTIONS:
            raise DataError(
                f"field map: {len(self.choices)} choice columns given; need {MIN_OPTIONS}-{MAX_OPTIONS}"
            )

    @classmethod
    def from_settings(
        cls,
        fields: Mapping[str, Any] | Sequence[str] | None = None,
        answer_base: int | None = None,
        strip_query_prefix: bool = False,
        source: str = FIELD_FLAG,
    ) -> FieldMap:
        """From ``KEY=COLUMN`` strings (flags) or a ``{key: column}`` mapping (a config's ``fields:``).

        ``choices`` may name several columns: ``opa,opb,opc`` on the command line, a list in YAML.
        """
        pairs = (
            list(fields.items()) if isinstance(fields, Mapping) else [_split_pair(p) for p in fields or []]
        )
        given: dict[str, Any] = {}
        for key, column in pairs:
            key = str(key).strip()
            if key not in FIELD_KEYS:
                close = difflib.get_close_matches(key, FIELD_KEYS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise DataError(f"{source}: unknown key '{key}'{hint}; keys: {', '.join(FIELD_KEYS)}")
            given[key] = _column(key, column, source)
        return cls(**given, answer_base=answer_base, strip_query_prefix=bool(strip_query_prefix))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], source: str = "fields") -> FieldMap:
        """From a train config's ``fields``, ``answer_base`` and ``strip_query_prefix`` (absent: unset)."""
        fields, answer_base, strip_query_prefix = (config.get(key) for key in FIELD_CONFIG_KEYS)
        return cls.from_settings(fields, answer_base, bool(strip_query_prefix), source)

    def columns(self) -> dict[str, str | tuple[str, ...]]:
        """The parts this map names, in ``FIELD_KEYS`` order."""
        return {key: getattr(self, key) for key in FIELD_KEYS if getattr(self, key) is not None}

    def over(self, defaults: FieldMap) -> FieldMap:
        """``defaults`` with every part this map sets replaced."""
        changes: dict[str, Any] = dict(self.columns())
        if self.answer_base is not None:
            changes["answer_base"] = self.answer_base
        if self.strip_query_prefix:
            changes["strip_query_prefix"] = True
        return dataclasses.replace(defaults, **changes)

    def required_fields(self, require_answer: bool) -> list[str]:
        names = [self.question] + (list(self.choices) if isinstance(self.choices, tuple) else [self.choices])
        if require_answer:
            names.append(self.answer)
        return [n for n in names if n is not None]

    def field_of(self, column: str) -> str | None:
        """The key (question, choices, ...) a column is mapped to, if any."""
        for key, value in self.columns().items():
            if column == value or (isinstance(value, tuple) and column in value):
                return key
        return None

    def flags(self) -> str:
        """The command-line flags that give this map, e.g. ``--field answer=label --answer-base 0``."""
        words: list[str] = []
        for key, value in self.columns().items():
            words += [FIELD_FLAG, f"{key}={','.join(value) if isinstance(value, tuple) else value}"]
        if self.answer_base is not None:
            words += [ANSWER_BASE_FLAG, str(self.answer_base)]
        if self.strip_query_prefix:
            words.append(STRIP_FLAG)
        return shlex.join(words)

    def to_settings(self) -> dict[str, Any]:
        """The config keys (``FIELD_CONFIG_KEYS``) that give this map."""
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in self.columns().items()}
        return dict(zip(FIELD_CONFIG_KEYS, (fields, self.answer_base, self.strip_query_prefix), strict=True))


def _split_pair(pair: str) -> tuple[str, str]:
    key, sep, column = pair.partition("=")
    if not sep or not key.strip():
        raise DataError(f"{FIELD_FLAG} expects KEY=COLUMN (keys: {', '.join(FIELD_KEYS)}), got '{pair}'")
    return key, column


def _column(key: str, value: Any, source: str) -> str | tuple[str, ...]:
    if key == "choices" and isinstance(value, list | tuple):
        names = [str(v).strip() for v in value]
    elif isinstance(value, str):
        names = [v.strip() for v in value.split(",")] if key == "choices" else [value.strip()]
    else:
        raise DataError(f"{source}: '{key}' must name a column, got {value!r}")
    if not all(names):
        raise DataError(f"{source}: '{key}' names an empty column: {value!r}")
    return tuple(names) if len(names) > 1 else names[0]
