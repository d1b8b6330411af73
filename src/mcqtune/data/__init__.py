"""The ``data`` stage: load multiple-choice files in any supported layout into validated examples.

Later stages import from here; :mod:`mcqtune.data.loading` holds the readers and row checks.
"""

from mcqtune.data.loading import (
    BUNDLED_DATASETS,
    FORMATS,
    LETTERS,
    MAX_LISTED_PROBLEMS,
    MAX_OPTIONS,
    MIN_OPTIONS,
    SPLITS,
    DataError,
    DataReport,
    FieldMap,
    LoadResult,
    MCQExample,
    Problem,
    answer_distribution,
    bundled_path,
    check_file,
    detect_format,
    load_examples,
    majority_baseline,
    resolve_data,
)

__all__ = [
    "BUNDLED_DATASETS",
    "FORMATS",
    "LETTERS",
    "MAX_LISTED_PROBLEMS",
    "MAX_OPTIONS",
    "MIN_OPTIONS",
    "SPLITS",
    "DataError",
    "DataReport",
    "FieldMap",
    "LoadResult",
    "MCQExample",
    "Problem",
    "answer_distribution",
    "bundled_path",
    "check_file",
    "detect_format",
    "load_examples",
    "majority_baseline",
    "resolve_data",
]
