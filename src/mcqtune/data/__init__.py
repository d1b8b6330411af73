"""The ``data`` stage: load multiple-choice files in any supported layout into validated examples.

``examples`` holds the one schema every layout becomes, ``readers`` the JSONL/CSV/parquet row readers,
``formats`` the registry of layouts (detect / fields / convert, one entry each), ``fields`` the user's
field map, ``loading`` the load itself, ``bundled_sets`` the data sets shipped in the package,
``reference`` what a data flag names (bundled set, file, saved or hub data set), ``datasets_io``
reading the latter through ``datasets``, ``check`` ``mcqtune data check``.
"""

from mcqtune.data.bundled_sets import BUNDLED_DATASETS, SPLITS, bundled_key, bundled_path
from mcqtune.data.check import DataReport, check_file
from mcqtune.data.examples import (
    LETTERS,
    MAX_OPTIONS,
    MIN_OPTIONS,
    LoadResult,
    MCQExample,
    answer_distribution,
    majority_baseline,
)
from mcqtune.data.fields import ANSWER_FIELDS, FIELD_KEYS, FieldMap
from mcqtune.data.formats import FORMATS, LAYOUTS
from mcqtune.data.loading import detect_format, load_examples
from mcqtune.data.reference import DataRef, data_refs, load_source, load_split, resolve_data
from mcqtune.errors import MAX_LISTED_PROBLEMS, DataError, Problem

__all__ = [
    "ANSWER_FIELDS",
    "BUNDLED_DATASETS",
    "FIELD_KEYS",
    "FORMATS",
    "LAYOUTS",
    "LETTERS",
    "MAX_LISTED_PROBLEMS",
    "MAX_OPTIONS",
    "MIN_OPTIONS",
    "SPLITS",
    "DataError",
    "DataRef",
    "DataReport",
    "FieldMap",
    "LoadResult",
    "MCQExample",
    "Problem",
    "answer_distribution",
    "bundled_key",
    "bundled_path",
    "check_file",
    "data_refs",
    "detect_format",
    "load_examples",
    "load_source",
    "load_split",
    "majority_baseline",
    "resolve_data",
]
