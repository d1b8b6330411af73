"""Forward passes: letter logits at the answer position, packed cloze == K separate sequences."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import make_tiny_causal_lm, make_tiny_llama
from mcqtune.data import MCQExample
from mcqtune.prompt import PromptEncoder
from mcqtune.scoring import (
    MIN_SHARED_PREFIX,
    cloze_forward,
    collate_cloze,
    collate_letter,
    letter_forward,
    ranking_loss,
    shared_prefix_length,
)

EXAMPLES = [
    MCQExample("a", "Which gas do plants absorb?", ("Oxygen", "Carbon dioxide", "Helium", "Argon"), 1),
    MCQExample("b", "What is 2+2?", ("four", "five", "twenty two"), 0),
    MCQExample(
        "c",
        "Of all the planets that orbit our sun, from the small rocky inner ones such as Mercury, Venus,"
        " Earth and Mars to the outer gas and ice giants, which one is the largest by mass and by volume?",
        ("Mars", "Jupiter"),
        1,
    ),
    MCQExample("d", "1+1?", ("2", "3"), 0),
]
LAYOUTS = {  # collate_cloze's keyword arguments
    "a row per option": {"packed": False},
    "a row per question": {"packed": True},
    "questions share rows": {"packed": True, "pack_questions": True},
}


def reference_option_logprobs(model, context, option):
    ids = torch.tensor([context + option])
    logp = model(ids).logits[0].float().log_softmax(-1)
    c = len(context)
    return sum(logp[c - 1 + j, option[j]].item() for j in range(len(option))) / len(option)


@torch.no_grad()
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cloze_scores_equal_separate_sequences(tiny_model, tokenizer, layout):
    features = PromptEncoder(tokenizer).encode_cloze(EXAMPLES).features
    batch = collate_cloze(features, tokenizer.pad_token_id, **LAYOUTS[layout])
    if layout == "questions share rows":
        assert len(batch.row_question) < len(features)  # the short questions did share a row
        assert batch.input_ids.shape[1] == max(f.length for f in features)  # no row got wider
    scores = cloze_forward(tiny_model, batch)
    for q, feature in enumerate(features):
        for k, option in enumerate(feature.option_ids):
            expected = reference_option_logprobs(tiny_model, feature.context_ids, option)
            assert scores[q, k].item() == pytest.approx(expected, abs=1e-4)
        assert torch.isinf(scores[q, len(feature.option_ids) :]).all()


def test_packed_mask_hides_other_options(tokenizer):
    features = PromptEncoder(tokenizer).encode_cloze(EXAMPLES[:1]).features
    batch = collate_cloze(features, tokenizer.pad_token_id, packed=True)
    mask = batch.attention_mask[0, 0]
    f = features[0]
    c = len(f.context_ids)
    first, second = c, c + len(f.option_ids[0])
    assert mask[second, first].item() is False  # option 2 cannot see option 1
    assert mask[second, c - 1].item() is True  # but sees the question
    assert batch.position_ids[0, second].item() == c  # positions restart after the question


def test_questions_share_rows_only_with_the_same_key(tokenizer):
    features = PromptEncoder(tokenizer).encode_cloze(EXAMPLES).features
    shared = collate_cloze(features, tokenizer.pad_token_id, pack_questions=True, keys=["x"] * len(features))
    apart = collate_cloze(features, tokenizer.pad_token_id, pack_questions=True, keys=list("abcd"))
    assert len(shared.row_question) < len(features)
    assert sorted(apart.row_question) == list(range(len(features)))


@torch.no_grad()
def test_letter_scores_are_letter_logprobs_at_the_answer_position(tiny_model, tokenizer):
    encoder = PromptEncoder(tokenizer)
    features = encoder.encode_letter(EXAMPLES, with_answer=False).features
    _, scores = letter_forward(tiny_model, collate_letter(features, tokenizer.pad_token_id), with_loss=False)
    for q, feature in enumerate(features):
        logp = tiny_model(torch.tensor([feature.input_ids])).logits[0, -1].float().log_softmax(-1)
        expected = logp[encoder.letter_token_ids[: len(feature.letter_ids)]]
        assert torch.allclose(scores[q, : len(expected)], expected, atol=1e-4)
        assert torch.isinf(scores[q, len(expected) :]).all()


def test_letter_loss_equals_hf_loss_on_answer_labels(tiny_model, tokenizer):
    features = PromptEncoder(tokenizer).encode_letter(EXAMPLES, with_answer=True).features
    batch = collate_letter(features, tokenizer.pad_token_id)
    loss, _ = letter_forward(tiny_model, batch, with_loss=True)
    per_example = [
        tiny_model(torch.tensor([f.input_ids]), labels=torch.tensor([f.labels])).loss for f in features
    ]
    assert loss.item() == pytest.approx(torch.stack(per_example).mean().item(), abs=1e-4)


def test_ranking_loss_trains_towards_the_gold_option(tiny_model, tokenizer):
    features = PromptEncoder(tokenizer).encode_cloze(EXAMPLES).features
    batch = collate_cloze(features, tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(tiny_model.parameters(), lr=3e-3)
    tiny_model.train()
    losses = []
    for _ in range(8):
        loss = ranking_loss(cloze_forward(tiny_model, batch), batch.answers)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.7


def test_shared_prefix_is_the_rows_common_start_and_leaves_each_prompts_last_token(tokenizer):
    features = PromptEncoder(tokenizer).encode_letter(EXAMPLES, with_answer=True).features
    common = 0
    while len({tuple(f.input_ids[: common + 1]) for f in features}) == 1:
        common += 1
    assert common >= MIN_SHARED_PREFIX  # the seed prompt's instruction line
    assert shared_prefix_length(features) == common
    batch = collate_letter(features, tokenizer.pad_token_id, share_prefix=True)
    assert batch.prefix_ids[0].tolist() == features[0].input_ids[:common]
    for row, f in enumerate(features):  # the rest of each row, left-padded, positions continuing
        n = len(f.input_ids) - common
        assert batch.input_ids[row, -n:].tolist() == f.input_ids[common:]
        assert batch.position_ids[row, -n:].tolist() == list(range(common, len(f.input_ids)))
        assert batch.attention_mask[row].sum() == len(f.input_ids)
    assert batch.real_tokens == common + sum(len(f.input_ids) - common for f in features)
    # Rows alike to the end still keep their prompt's last token (its logits are scored) and the answer.
    twins = [features[0], dataclasses.replace(features[0], index=1)]
    assert shared_prefix_length(twins) == features[0].prompt_length - 1
    # Nothing to share: one row, or a loss over every prompt position.
    assert collate_letter(features[:1], tokenizer.pad_token_id, share_prefix=True).prefix_ids is None
    assert collate_letter(features, tokenizer.pad_token_id, True, share_prefix=True).prefix_ids is None


@pytest.mark.parametrize("architecture", ["Llama", "Qwen2", "Gemma", "Mistral"])
def test_shared_prefix_gives_the_scores_loss_and_gradients_of_whole_rows(architecture, tokenizer):
    if architecture == "Llama":
        model = make_tiny_llama(tokenizer)
    else:
        model = make_tiny_causal_lm(architecture, tokenizer)
    model.train()  # training mode: the math attention kernel and the path the trainer takes
    features = PromptEncoder(tokenizer).encode_letter(EXAMPLES, with_answer=True).features
    results = []
    for share in (False, True):
        batch = collate_letter(features, tokenizer.pad_token_id, share_prefix=share)
        assert (batch.prefix_ids is not None) == share
        model.zero_grad()
        loss, scores = letter_forward(model, batch, with_loss=True)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss, scores, grads, batch.computed_tokens))
    (loss, scores, grads, computed), (shared_loss, shared_scores, shared_grads, shared_computed) = results
    torch.testing.assert_close(shared_loss, loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared_scores, scores, atol=1e-4, rtol=0)
    assert shared_grads.keys() == grads.keys()
    for name, grad in grads.items():  # the embedding's rows of the prefix tokens included
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-3, msg=name)
    prefix = shared_prefix_length(features)
    assert shared_computed == computed - (len(features) - 1) * prefix  # the prefix ran once
