"""``mcqtune compare``: every method under one budget, each in its own process; tables and reports."""
