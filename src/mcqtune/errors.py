"""Every user-error class in one place.

A :class:`UserError` is a mistake the user can fix (bad data, config, model, artifact, resources): the
CLI prints its message as one line and exits 2, where any other exception is a bug with a traceback.
Each class keeps the builtin base it always had (``ValueError``/``RuntimeError``) for callers that catch
those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# How many row problems an error message lists before "... and N more".
MAX_LISTED_PROBLEMS = 20


class UserError(Exception):
    """Base of every error whose message is meant for the user as is."""


class ConfigError(UserError, ValueError):
    """A user error in a config file or flag."""


class ModelError(UserError, RuntimeError):
    """A model could not be found or loaded; the message says what to do."""


class ArtifactError(UserError, ValueError):
    """An artifact directory is missing, corrupt, or belongs to another base model."""


class CheckpointError(UserError, ValueError):
    """A user-facing problem with a run directory's checkpoints (mismatch, nothing to resume, corrupt)."""


class ResourceError(UserError, RuntimeError):
    """The machine cannot run what was asked (disk, memory, an unwritable output); said with numbers."""


class DiskSpaceError(ResourceError):
    """Not enough free disk space for what is about to be written."""


class ExportError(UserError, ValueError):
    """The run cannot be exported, or the merged model does not reproduce it."""


class BackendError(UserError, RuntimeError):
    """An execution backend (Ray) is not installed or cannot be reached; the message says what to do."""


class PriorError(ConfigError):
    """A saved letter prior that is unreadable or does not fit the model/scoring it is applied to."""


@dataclass
class Problem:
    """One bad (``severity="error"``, row dropped) or suspicious (``"warning"``, row kept) row.

    ``line`` is the 1-based file line for JSONL/CSV, or the 0-based row index for parquet (``unit="row"``).
    """

    file: str
    line: int | None
    field: str | None
    reason: str
    severity: str = "error"
    unit: str = "line"

    def location(self) -> str:
        if self.line is None:
            return self.file
        if self.unit == "row":
            return f"{self.file}:row {self.line}"
        return f"{self.file}:{self.line}"

    def __str__(self) -> str:
        parts = [self.location()] if self.file else []
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        parts.append(self.reason)
        return ": ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "unit": self.unit,
            "field": self.field,
            "reason": self.reason,
            "severity": self.severity,
        }


class DataError(UserError, ValueError):
    """A user error in a data file or data argument; ``str()`` is meant to be printed as is.

    A single problem gives one line (``FILE:LINE: field 'cop': ...``). When a load finds several bad rows
    the message starts with a one-line summary and lists the first ``MAX_LISTED_PROBLEMS`` below it;
    all of them are in ``.problems``.
    """

    def __init__(
        self,
        reason: str,
        *,
        file: str = "",
        line: int | None = None,
        field: str | None = None,
        unit: str = "line",
        problems: list[Problem] | None = None,
        message: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.reason = reason
        self.unit = unit
        self.problems = problems if problems is not None else []
        if message is None:
            message = str(Problem(file, line, field, reason, unit=unit))
        super().__init__(message)

    @classmethod
    def from_problem(cls, problem: Problem) -> DataError:
        return cls(
            problem.reason,
            file=problem.file,
            line=problem.line,
            field=problem.field,
            unit=problem.unit,
            problems=[problem],
        )

    @classmethod
    def from_problems(cls, file: str, problems: list[Problem], bad_rows: int) -> DataError:
        if len(problems) == 1:
            return cls.from_problem(problems[0])
        first = problems[0]
        summary = (
            f"{bad_rows} bad row{'s' if bad_rows != 1 else ''} ({len(problems)} problems); "
            "fix them or load with on_bad_rows='skip' to drop them"
        )
        lines = [f"{file}: {summary}"]
        lines += [f"  {p}" for p in problems[:MAX_LISTED_PROBLEMS]]
        if len(problems) > MAX_LISTED_PROBLEMS:
            lines.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
        return cls(
            summary,
            file=file,
            line=first.line,
            field=first.field,
            unit=first.unit,
            problems=problems,
            message="\n".join(lines),
        )


class RequestError(UserError, ValueError):
    """A bad request to ``mcqtune serve``; ``status`` is the HTTP status the server answers with."""

    status = 400


class UnknownArtifactError(RequestError):
    """A request named an artifact the server neither holds nor may load."""

    status = 404
