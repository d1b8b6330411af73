"""Forward passes: letter logits at the answer position, packed cloze == K separate sequences."""

from __future__ import annotations

import pytest
import torch

from mcqtune.data import MCQExample
from mcqtune.prompt import PromptEncoder
from mcqtune.scoring import cloze_forward, collate_cloze, collate_letter, letter_forward, ranking_loss

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
