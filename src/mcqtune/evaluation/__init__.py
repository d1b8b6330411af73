"""The ``evaluate`` stage: scoring runs, pure metrics, letter-bias analyses and reports."""
