"""The baselines ``bench/run.py`` compares mcqtune against: what a user writes from the public notebook.

- :func:`naive_trainer`: HF ``Trainer`` + peft LoRA, fp32 weights and fp32 compute (no bf16 flag),
  the letter-recipe text (prompt + answer letter) tokenized with ``padding="max_length"`` and
  ``truncation=True`` to 512 tokens, and ``DataCollatorForLanguageModeling(mlm=False)``: ``labels`` are the
  whole sequence (padding masked), so the LM head computes full-vocabulary logits at every position.
  The notebook computes the answer letter but never appends it; we append it, so both recipes learn the
  same target and their accuracies can be compared.
- :func:`generate_and_parse`: greedy ``model.generate`` per question (batch 1, fp32, KV cache on, as a
  user loads the model with ``from_pretrained``), then the first standalone option letter of the decoded
  text is the prediction.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mcqtune.data import LETTERS, MCQExample
from mcqtune.prompt import PromptConfig, PromptEncoder, render_letter_prompt

NAIVE_MAX_LENGTH = 512  # the seed notebook's max_length
GENERATE_MAX_NEW_TOKENS = 8  # enough for "A. <option text>"; only the first letter is parsed


# ----------------------------------------------------------------------------------------- training
def naive_texts(examples: list[MCQExample], prompt: PromptConfig | None = None) -> list[str]:
    """The letter recipe's training text: the seed prompt with the answer letter appended."""
    prompt = prompt or PromptConfig()
    answer = prompt.answer_format
    return [render_letter_prompt(e, prompt) + answer.format(letter=e.answer_letter) for e in examples]


def naive_dataset(tokenizer, texts: list[str], max_length: int = NAIVE_MAX_LENGTH):
    """``datasets.Dataset`` tokenized once with ``padding="max_length"``, as in the notebook."""
    from datasets import Dataset

    def tokenize(batch: dict[str, list[str]]) -> dict[str, Any]:
        return tokenizer(batch["text"], padding="max_length", truncation=True, max_length=max_length)

    dataset = Dataset.from_dict({"text": texts})
    return dataset.map(tokenize, batched=True, remove_columns=["text"])


def naive_lora_model(model_path: str, options: dict[str, Any]):
    """fp32 base from ``from_pretrained`` + peft LoRA with the same rank/alpha/dropout/targets as mcqtune."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = LoraConfig(
        r=int(options.get("r", 16)),
        lora_alpha=float(options.get("alpha", 32)),
        lora_dropout=float(options.get("dropout", 0.05)),
        target_modules=options.get("target_modules", "all-linear"),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


class CountingCollator:
    """``DataCollatorForLanguageModeling(mlm=False)`` that also records each batch's real (non-pad) tokens."""

    def __init__(self, tokenizer):
        from transformers import DataCollatorForLanguageModeling

        self.inner = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        self.real_tokens: list[int] = []
        self.questions: list[int] = []

    def __call__(self, features):
        batch = self.inner(features)
        self.real_tokens.append(int(batch["attention_mask"].sum()))
        self.questions.append(int(batch["input_ids"].shape[0]))
        return batch


def naive_trainer(
    model,
    tokenizer,
    dataset,
    output_dir: str | Path,
    *,
    batch_size: int,
    max_steps: int,
    lr: float,
    warmup_ratio: float,
    weight_decay: float,
    max_grad_norm: float,
    seed: int,
    callbacks: list | None = None,
    collator: CountingCollator | None = None,
):
    """``Trainer`` with fp32 ``TrainingArguments`` (no bf16/fp16), the notebook's defaults otherwise."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        max_steps=max_steps,
        learning_rate=lr,
        lr_scheduler_type="linear",
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        seed=seed,
        bf16=False,
        fp16=False,
        use_cpu=True,
        save_strategy="no",
        logging_steps=max(1, max_steps),
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator or CountingCollator(tokenizer),
        callbacks=callbacks or [],
    )


# ----------------------------------------------------------------------------------------- evaluation
@dataclass
class Generated:
    predictions: np.ndarray  # (N,) option index parsed from the text, -1 when none
    first_tokens: np.ndarray  # (N,) first generated token id
    first_is_letter: np.ndarray  # (N,) bool: that token is one of the question's option-letter tokens
    texts: list[str]
    seconds: float


_LETTER = re.compile(r"\b([A-Z])\b")


def parse_first_letter(text: str, n_options: int) -> int:
    """Index of the first standalone option letter in ``text`` ("B", "B.", "(B) ...", "I think C"); failing
    that, the first character when it is an option letter ("BDD"); else -1."""
    for match in _LETTER.finditer(text):
        index = LETTERS.find(match.group(1))
        if 0 <= index < n_options:
            return index
    first = text.strip()[:1]
    index = LETTERS.find(first) if first else -1
    return index if 0 <= index < n_options else -1


@torch.no_grad()
def generate_and_parse(
    model,
    tokenizer,
    encoder: PromptEncoder,
    examples: list[MCQExample],
    *,
    max_new_tokens: int = GENERATE_MAX_NEW_TOKENS,
) -> Generated:
    """Greedy generation one question at a time on exactly the prompt tokens mcqtune scores."""
    features = encoder.encode_letter(examples, with_answer=False).features
    if len(features) != len(examples):
        raise ValueError("generate_and_parse: some prompts do not fit max_length")
    model.eval()
    device = next(model.parameters()).device
    predictions, first_tokens, first_is_letter, texts = [], [], [], []
    start = time.perf_counter()
    for feature, example in zip(features, examples, strict=True):
        ids = torch.tensor([feature.input_ids], device=device)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = out[0, ids.shape[1] :].tolist()
        text = tokenizer.decode(new, skip_special_tokens=True)
        texts.append(text)
        first_tokens.append(new[0] if new else -1)
        first_is_letter.append(bool(new) and new[0] in feature.letter_ids)
        predictions.append(parse_first_letter(text, len(example.choices)))
    return Generated(
        predictions=np.array(predictions),
        first_tokens=np.array(first_tokens),
        first_is_letter=np.array(first_is_letter, dtype=bool),
        texts=texts,
        seconds=time.perf_counter() - start,
    )
