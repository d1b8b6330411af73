"""The bundled model's name and its aliases: read by the settings (a light import, so the command line's
``--help`` need not import torch) and by :mod:`mcqtune.models`, which loads it."""

DEFAULT_MODEL = "smollm2-135m-instruct"
MODEL_ALIASES = {"smollm2": DEFAULT_MODEL, "smollm2-135m": DEFAULT_MODEL, "default": DEFAULT_MODEL}
