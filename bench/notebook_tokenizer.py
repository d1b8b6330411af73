"""The seed notebook's tokenizer set-up, shared by the naive and TRL recipes.

Its own module because the TRL recipe's process must not import mcqtune (bench/trl_recipe.py), and
bench/naive.py does.
"""

from __future__ import annotations

from typing import Any


def notebook_tokenizer(model_path: str) -> Any:
    """The model's tokenizer with a pad token (its EOS where it has none), as the notebook sets it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
