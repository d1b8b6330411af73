"""``mcqtune search``: each method's best settings for the user's data, found with Optuna (engine.py),
from the search spaces in the methods' YAML (space.py), through the trial hook compare shares (study.py)."""
