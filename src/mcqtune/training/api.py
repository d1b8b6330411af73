"""The training stage's entry points for the rest of the package (the commands, compare's worker, the
demo): train one run, its result, and the interruption a command reports. What is behind them
(the recipe, the run directory, checkpoints) may change shape without touching their importers."""

from mcqtune.training.interruption import TrainingInterrupted
from mcqtune.training.recipe import TrainResult, train

__all__ = ["TrainResult", "TrainingInterrupted", "train"]
