"""Templates, label masks and truncation for both formulations (real tokenizer, no model)."""

from __future__ import annotations

from mcqtune.data import MCQExample
from mcqtune.prompt import DEFAULT_LETTER_TEMPLATE, PromptConfig, PromptEncoder, render_letter_prompt

EXAMPLE = MCQExample("q1", "Which gas do plants absorb?", ("Oxygen", "Carbon dioxide", "Helium", "Argon"), 1)


def test_letter_prompt_is_the_seed_template_with_the_answer_appended(tokenizer):
    encoder = PromptEncoder(tokenizer)
    feature = encoder.encode_letter([EXAMPLE], with_answer=True).features[0]
    text = tokenizer.decode(feature.input_ids, skip_special_tokens=True)
    assert text == (
        "Choose the correct option for the following question.\n\n### Question:\nWhich gas do plants absorb?"
        "\n\n### Choice:\nA. Oxygen\nB. Carbon dioxide\nC. Helium\nD. Argon\n\n### Answer:\nB"
    )
    assert render_letter_prompt(EXAMPLE, PromptConfig()).startswith(DEFAULT_LETTER_TEMPLATE.split("{")[0])


def test_only_the_answer_token_carries_loss(tokenizer):
    encoder = PromptEncoder(tokenizer)
    feature = encoder.encode_letter([EXAMPLE], with_answer=True).features[0]
    labelled = [(i, t) for i, t in enumerate(feature.labels) if t != -100]
    assert len(labelled) == 1
    position, token = labelled[0]
    assert position == len(feature.input_ids) - 1
    assert tokenizer.decode([token]) == "B"
    assert token == encoder.letter_token_ids[1]


def test_train_on_prompt_labels_everything(tokenizer):
    encoder = PromptEncoder(tokenizer, PromptConfig(train_on_prompt=True))
    feature = encoder.encode_letter([EXAMPLE], with_answer=True).features[0]
    assert feature.labels == feature.input_ids


def test_letter_tokens_match_in_context_tokenization(tokenizer):
    encoder = PromptEncoder(tokenizer)
    prompt = render_letter_prompt(EXAMPLE, encoder.config)
    for k, letter in enumerate("ABCD"):
        ids = tokenizer(prompt + letter)["input_ids"]
        assert ids[-1] == encoder.letter_token_ids[k]
    assert len(set(encoder.letter_token_ids)) == 10


def test_scoring_features_have_no_answer_appended(tokenizer):
    encoder = PromptEncoder(tokenizer)
    feature = encoder.encode_letter([EXAMPLE], with_answer=False).features[0]
    assert feature.prompt_length == len(feature.input_ids)
    assert all(t == -100 for t in feature.labels)


def test_cloze_context_and_options(tokenizer):
    encoder = PromptEncoder(tokenizer)
    feature = encoder.encode_cloze([EXAMPLE]).features[0]
    assert tokenizer.decode(feature.context_ids, skip_special_tokens=True) == (
        "Question: Which gas do plants absorb?\nAnswer:"
    )
    assert [tokenizer.decode(o) for o in feature.option_ids] == [
        " Oxygen",
        " Carbon dioxide",
        " Helium",
        " Argon",
    ]
    assert feature.answer == 1


def test_truncation_shortens_the_question_and_keeps_every_option(tokenizer):
    long_question = "Background sentence number {}. " * 200 + "Which gas do plants absorb?"
    example = MCQExample("long", long_question.format(*range(200)), EXAMPLE.choices, 1)
    encoder = PromptEncoder(tokenizer, PromptConfig(max_length=96))
    letter = encoder.encode_letter([example], with_answer=True)
    feature = letter.features[0]
    assert len(feature.input_ids) <= 96
    text = tokenizer.decode(feature.input_ids, skip_special_tokens=True)
    assert "..." in text and "Which gas do plants absorb?" in text  # the end of the question is kept
    for option in EXAMPLE.choices:
        assert option in text
    assert text.endswith("### Answer:\nB")
    cloze = encoder.encode_cloze([example]).features[0]
    assert len(cloze.context_ids) + max(len(o) for o in cloze.option_ids) <= 96
    assert len(cloze.option_ids) == 4


def test_rows_whose_options_cannot_fit_are_skipped_and_counted(tokenizer):
    huge = tuple(("option text " * 80) + str(i) for i in range(4))
    example = MCQExample("huge", "Q?", huge, 0)
    encoder = PromptEncoder(tokenizer, PromptConfig(max_length=64))
    letter = encoder.encode_letter([EXAMPLE, example], with_answer=True)
    assert [f.index for f in letter.features] == [0]
    assert [i for i, _ in letter.skipped] == [1]
    cloze = encoder.encode_cloze([EXAMPLE, example])
    assert [i for i, _ in cloze.skipped] == [1]
