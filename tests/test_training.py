"""The trainer and its objectives: option shuffling, the same losses as before the refactor, one
optimizer step per call, and the benchmark stepping the very same trainer."""

from __future__ import annotations

import pytest
import torch

from mcqtune.config import TrainConfig, build_config
from mcqtune.data import MCQExample
from mcqtune.models import resolve_model
from mcqtune.prompt import PromptEncoder
from mcqtune.training.objectives import LetterObjective, RankingObjective, make_objective, shuffle_options


def _examples(answers, k=4):
    return [
        MCQExample(str(i), f"question {i}?", tuple(f"opt{i}-{j}" for j in range(k)), a)
        for i, a in enumerate(answers)
    ]


# ----------------------------------------------------------------------------- objectives


def test_objectives_are_looked_up_by_name_and_carry_their_scoring(tokenizer):
    encoder = PromptEncoder(tokenizer)
    letter, ranking = make_objective("letter", encoder, True), make_objective("ranking", encoder, True)
    assert isinstance(letter, LetterObjective) and letter.scoring == "letter"
    assert isinstance(ranking, RankingObjective) and ranking.scoring == "cloze"
    assert letter.order_sensitive and not ranking.order_sensitive  # cloze options never see each other


def test_shuffle_options_is_deterministic_per_epoch_and_keeps_the_answer():
    ex = _examples([1], k=5)[0]
    one = shuffle_options(ex, seed=1, epoch=0, index=7)
    assert one == shuffle_options(ex, seed=1, epoch=0, index=7)
    assert one.choices[one.answer] == ex.choices[ex.answer]
    assert sorted(one.choices) == sorted(ex.choices)
    epochs = {shuffle_options(ex, seed=1, epoch=e, index=7).choices for e in range(10)}
    assert len(epochs) > 1


def test_shuffled_features_label_the_remapped_letter(tokenizer):
    examples = _examples([0, 0, 0, 0, 0, 0, 0, 0])
    encoder = PromptEncoder(tokenizer)
    objective = LetterObjective(encoder, packed=True)
    features = objective.encode(examples)
    shuffled = objective.shuffled(examples, features, seed=0, epoch=3)
    assert [f.index for f in shuffled] == [f.index for f in features]
    letters = encoder.letter_token_ids
    answers = []
    for f in shuffled:
        answer_token = [t for t in f.labels if t != -100]
        assert answer_token == [letters[f.answer]]
        answers.append(f.answer)
        moved = shuffle_options(examples[f.index], 0, 3, f.index)
        assert moved.answer == f.answer
    assert len(set(answers)) > 1  # the all-"A" training set is no longer all A


@pytest.mark.parametrize("objective", ["letter", "ranking"])
def test_train_shuffles_options_by_default_for_the_letter_objective_only(
    objective, tiny_model_dir, tmp_path, monkeypatch
):
    from mcqtune.training.recipe import train

    calls = []
    real = LetterObjective.shuffled
    monkeypatch.setattr(LetterObjective, "shuffled", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    config = build_config(
        {
            "model": str(tiny_model_dir),
            "objective": objective,
            "train": "arc_easy",
            "output": str(tmp_path / "run"),
            "max_steps": 3,
            "batch_size": 2,
            "train_limit": 4,
            "precision": "fp32",
        }
    )
    config.validation = None
    assert config.shuffle_options  # the measured default (docs/EVALUATION.md)
    train(config, show_progress=False)
    # letter: every step's batch is re-ordered (epoch 0, then 1 after the 4 rows are used up);
    # ranking: cloze options never see each other, so nothing is shuffled
    assert calls == ([0, 0, 1] if objective == "letter" else [])


def test_train_with_shuffle_options_runs(tiny_model_dir, tmp_path):
    from mcqtune.training.recipe import train

    config = build_config(
        {
            "model": str(tiny_model_dir),
            "objective": "letter",
            "train": "arc_easy",
            "validation": "arc_easy",
            "output": str(tmp_path / "run"),
            "max_steps": 3,
            "batch_size": 2,
            "train_limit": 4,
            "eval_limit": 4,
            "final_eval_limit": 4,
            "eval_steps": 3,
            "shuffle_options": True,
            "precision": "fp32",
        }
    )
    result = train(config, show_progress=False)
    assert result.metrics["train"]["steps"] == 3
    assert "letter_bias" in result.metrics["validation"]


# ----------------------------------------------------------------------------- same losses as before

# Per-step losses (history, rounded to 5 digits) of 6-step runs on the tiny Llama of conftest.py
# (make_tiny_llama(tokenizer), seed 0), recorded with the code *before* the trainer was split out of
# train() (commit 9cb1564), with the flags of _RECORDED_FLAGS plus the row's own; the refactor must
# reproduce them (fp32: no autocast, so the numbers are exact on this machine's torch build). LoRA rows
# keep the dropout they were recorded with (0.05; the default is 0 since 2026-12-02).
_RECORDED_FLAGS = {
    "train": "arc_easy",
    "validation": "arc_easy",
    "max_steps": 6,
    "batch_size": 2,
    "train_limit": 8,
    "eval_steps": 3,
    "eval_limit": 4,
    "final_eval_limit": 4,
    "precision": "fp32",
}
# save_steps: none (a flag of None reads as not given, so it goes in the base config)
_NO_CHECKPOINTS = TrainConfig(save_steps=None)
_RECORDED_LOSSES = {
    "lora letter, grad_accum 2, options shuffled": (
        {"method": "lora", "objective": "letter", "grad_accum": 2, "method_options": {"dropout": 0.05}},
        [10.89815, 10.85214, 10.82248, 10.74284, 10.73214, 10.67204],
    ),
    "lora ranking": (
        {"method": "lora", "objective": "ranking", "method_options": {"dropout": 0.05}},
        [1.35878, 1.39642, 1.34023, 1.38983, 1.3857, 1.30705],
    ),
    "full letter": (
        {"method": "full", "objective": "letter"},
        [10.88445, 10.95163, 10.91878, 10.91956, 10.85216, 10.87402],
    ),
}


@pytest.mark.parametrize("case", list(_RECORDED_LOSSES))
def test_train_reproduces_the_losses_recorded_before_the_trainer_refactor(case, tiny_model_dir, tmp_path):
    from mcqtune.training.recipe import train

    flags, recorded = _RECORDED_LOSSES[case]
    config = build_config(
        {**_RECORDED_FLAGS, **flags, "model": str(tiny_model_dir), "output": str(tmp_path / "run")},
        base=_NO_CHECKPOINTS,
    )
    result = train(config, show_progress=False)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses == pytest.approx(recorded, abs=2e-5)


# ----------------------------------------------------------------------------- the trainer itself


def _trainer_config(tiny_model_dir, **overrides):
    config = build_config(
        {
            "method": "lora",
            "objective": "letter",
            "model": str(tiny_model_dir),
            "train": "arc_easy",
            "max_steps": 4,
            "batch_size": 2,
            "precision": "fp32",
            "method_options": {"r": 4},
            **overrides,
        }
    )
    config.validation = None
    return config


def test_one_step_is_one_optimizer_step_over_grad_accum_micro_batches(
    tiny_model_dir, tokenizer, arc_examples
):
    from mcqtune.training.trainer import Trainer

    config = _trainer_config(tiny_model_dir, grad_accum=3, shuffle_options=False)
    trainer = Trainer(config, resolve_model(str(tiny_model_dir)), PromptEncoder(tokenizer), arc_examples[:12])
    before = {n: p.detach().clone() for n, p in trainer.named_trainable.items()}
    # the same three micro-batches, stepped by hand: mean loss, one clipped AdamW step
    probe = Trainer(config, resolve_model(str(tiny_model_dir)), PromptEncoder(tokenizer), arc_examples[:12])
    groups = [next(probe.stream).features for _ in range(3)]
    result = trainer.step()
    assert result.questions == 6
    assert result.real_tokens == sum(probe.objective.collate(g).real_tokens for g in groups)
    # every position the model ran, padding included: what the real-token share divides by
    assert result.computed_tokens == sum(probe.objective.collate(g).computed_tokens for g in groups)
    assert result.computed_tokens > result.real_tokens  # these rows differ in length: some padding
    expected = sum(probe.objective.loss(probe.model, probe.objective.collate(g)).item() for g in groups) / 3
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert trainer.scheduler.scheduler.last_epoch == 1  # the scheduler moved once, not three times
    changed = [n for n, p in trainer.named_trainable.items() if not torch.equal(p, before[n])]
    assert changed


def test_metrics_count_the_computed_tokens_beside_the_real_ones(tiny_model_dir, tmp_path):
    import json

    from mcqtune.training.recipe import train

    config = _trainer_config(tiny_model_dir, max_steps=3, batch_size=4, train_limit=12, shuffle_options=False)
    config.output = str(tmp_path / "run")
    train(config, show_progress=False)
    done = json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]
    assert done["computed_tokens"] > done["real_tokens"] > 0  # batches of 4 rows of different lengths
    assert done["real_token_share"] == pytest.approx(done["real_tokens"] / done["computed_tokens"], abs=1e-4)
    assert done["precision"] == "fp32"


def test_a_method_without_trainable_rows_is_a_data_error_naming_the_file(
    tiny_model_dir, tokenizer, arc_examples
):
    from mcqtune.data import DataError
    from mcqtune.training.trainer import Trainer

    config = _trainer_config(tiny_model_dir, prompt={"max_length": 8})
    with pytest.raises(DataError, match="no training row fits") as err:
        Trainer(
            config,
            resolve_model(str(tiny_model_dir)),
            PromptEncoder(tokenizer, config.prompt_config()),
            arc_examples[:4],
            data_file="rows.jsonl",
        )
    assert "rows.jsonl" in str(err.value)


def test_the_benchmark_steps_the_same_trainer(tiny_model_dir, tokenizer, arc_examples):
    from accelerate.utils import set_seed
    from bench import helpers

    from mcqtune.training.trainer import Trainer

    config = _trainer_config(tiny_model_dir)
    resolved, encoder = resolve_model(str(tiny_model_dir)), PromptEncoder(tokenizer)
    set_seed(0)
    stepper = helpers.McqtuneStepper(config, resolved, encoder, arc_examples[:8])
    stepper.step()
    stepper.step()
    set_seed(0)
    trainer = Trainer(config, resolved, encoder, arc_examples[:8])
    assert stepper.losses == [trainer.step().loss, trainer.step().loss]
    assert stepper.timings.questions == [2, 2]


@pytest.mark.parametrize("native_bf16", [True, False])
def test_precision_asked_for_is_used_whatever_the_host(
    native_bf16, tiny_model_dir, tokenizer, arc_examples, monkeypatch
):
    """ "auto" follows the CPU (bf16 only with native support); "bf16" and "fp32" are what they say on any
    host, so tests that ask for bf16 run the bf16 path where the CPU only emulates it (AVX2)."""
    from mcqtune.models import resolve_precision
    from mcqtune.training.trainer import Trainer

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native_bf16)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16 else "fp32")
    assert resolve_precision("bf16", cpu) == "bf16" and resolve_precision("fp32", cpu) == "fp32"
    for asked in ("bf16", "fp32"):
        trainer = Trainer(
            _trainer_config(tiny_model_dir, precision=asked),
            resolve_model(str(tiny_model_dir)),
            PromptEncoder(tokenizer),
            arc_examples[:2],
        )
        assert trainer.precision == asked
        assert trainer.accelerator.mixed_precision == ("bf16" if asked == "bf16" else "no")
        frozen = trainer.unwrapped.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
        assert frozen.dtype == (torch.bfloat16 if asked == "bf16" else torch.float32)
        assert trainer.step().loss > 0


@pytest.mark.parametrize(
    ("overrides", "shares"),
    [
        ({}, True),
        ({"gradient_checkpointing": True}, False),  # checkpointed layers drop the prefix's cache
        ({"method_options": {"r": 4, "dropout": 0.1}}, False),  # the rows would share its dropout masks
        ({"packing": False}, False),
    ],
    ids=["default", "gradient checkpointing", "dropout", "no packing"],
)
def test_training_batches_share_their_prompt_start_only_where_that_changes_no_number(
    overrides, shares, tiny_model_dir, tokenizer, arc_examples
):
    from mcqtune.training.trainer import Trainer

    config = _trainer_config(tiny_model_dir, shuffle_options=False, **overrides)
    trainer = Trainer(config, resolve_model(str(tiny_model_dir)), PromptEncoder(tokenizer), arc_examples[:8])
    batch = trainer.objective.collate(trainer.next_features())
    assert trainer.shares_prefix is shares
    assert (batch.prefix_ids is not None) is shares
    assert trainer.step().loss > 0
