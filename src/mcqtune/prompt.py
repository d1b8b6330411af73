"""The ``prompt`` stage: templates, tokenization and label masks for both formulations.

Letter formulation (the seed recipe): the options are lettered inside the prompt and the target is the
answer letter appended after ``### Answer:``. Only the answer token(s) carry loss unless
``train_on_prompt`` is set. (A well-known public notebook of this recipe computes the letter but never
appends it, so its model is trained on prompts alone; we append it.)

Cloze formulation: the prompt holds only the question; each option's text is scored as a continuation
and only option tokens are scored.

Truncation never drops an option or the answer: the question is shortened (keeping its end, where the
actual ask usually is) and, if the options alone do not fit, the row is skipped and counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mcqtune.data import LETTERS, MCQExample

if TYPE_CHECKING:  # transformers is heavy to import, and the command line's parser reads PromptConfig
    from transformers import PreTrainedTokenizerBase

DEFAULT_LETTER_TEMPLATE = (
    "Choose the correct option for the following question.\n\n"
    "### Question:\n{question}\n\n"
    "### Choice:\n{choices}\n\n"
    "### Answer:\n"
)
DEFAULT_CHOICE_FORMAT = "{letter}. {text}"
DEFAULT_CLOZE_TEMPLATE = "Question: {question}\nAnswer:"
TRUNCATION_MARK = "..."


@dataclass
class PromptConfig:
    """Everything that decides the token sequences; saved in artifacts so eval re-creates them."""

    letter_template: str = DEFAULT_LETTER_TEMPLATE
    choice_format: str = DEFAULT_CHOICE_FORMAT
    answer_format: str = "{letter}"
    cloze_template: str = DEFAULT_CLOZE_TEMPLATE
    cloze_option_prefix: str = " "
    max_length: int = 512
    train_on_prompt: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PromptConfig:
        known = {k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class LetterFeatures:
    """One question in the letter formulation.

    ``input_ids`` is the prompt (plus the answer when training); ``labels`` masks all but the answer;
    ``letter_ids[k]`` is the token that spells option k's letter right after the prompt.
    """

    index: int
    input_ids: list[int]
    labels: list[int]
    prompt_length: int
    letter_ids: list[int]
    answer: int | None


@dataclass
class ClozeFeatures:
    """One question in the cloze formulation: a shared context and one token span per option."""

    index: int
    context_ids: list[int]
    option_ids: list[list[int]]
    answer: int | None

    @property
    def length(self) -> int:
        return len(self.context_ids) + sum(len(o) for o in self.option_ids)


@dataclass
class Encoded:
    """Tokenized rows plus the rows that could not be fitted, so callers can warn with a count."""

    features: list[Any]
    skipped: list[tuple[int, str]] = field(default_factory=list)


def render_choices(choices: tuple[str, ...] | list[str], config: PromptConfig) -> str:
    return "\n".join(config.choice_format.format(letter=LETTERS[i], text=t) for i, t in enumerate(choices))


def render_letter_prompt(example: MCQExample, config: PromptConfig, question: str | None = None) -> str:
    return config.letter_template.format(
        question=example.question if question is None else question,
        choices=render_choices(example.choices, config),
    )


def render_cloze_context(example: MCQExample, config: PromptConfig, question: str | None = None) -> str:
    return config.cloze_template.format(question=example.question if question is None else question)


class PromptEncoder:
    """Tokenizes examples for one tokenizer and prompt config; letter token ids are computed once."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: PromptConfig | None = None):
        self.tokenizer = tokenizer
        self.config = config or PromptConfig()
        self._letter_token_ids = self._find_letter_tokens()

    def _tokens(self, text: str, special: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def _batch_tokens(self, texts: list[str], special: bool) -> list[list[int]]:
        """Many texts in one tokenizer call (a fast tokenizer's batch: ~10x quicker than one by one)."""
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=special)["input_ids"]

    def _find_letter_tokens(self) -> list[int]:
        """The token each answer letter becomes when appended to a prompt (context matters for BPE)."""
        probe = self.config.letter_template.format(question="Q", choices="A. x")
        probe_ids = self._tokens(probe, True)
        ids = []
        for letter in LETTERS:
            full = self._tokens(probe + self.config.answer_format.format(letter=letter), True)
            if full[: len(probe_ids)] != probe_ids or len(full) <= len(probe_ids):
                raise ValueError(
                    "the answer letter merges with the end of the prompt under this tokenizer; "
                    "end the letter template with a newline or space"
                )
            ids.append(full[len(probe_ids)])
        if len(set(ids)) != len(ids):
            raise ValueError("answer letters do not map to distinct first tokens under this tokenizer")
        return ids

    @property
    def letter_token_ids(self) -> list[int]:
        return list(self._letter_token_ids)

    def _fitted_prompt(
        self, example: MCQExample, render, fixed_tokens: int, whole: list[int]
    ) -> list[int] | None:
        """The rendered prompt's tokens, ``whole`` when it fits with ``fixed_tokens`` more, else with the
        question shortened (:meth:`_fit_question`); None if it never fits."""
        if len(whole) + fixed_tokens <= self.config.max_length:
            return whole
        question = self._fit_question(example, render, fixed_tokens)
        return None if question is None else self._tokens(render(example, self.config, question), True)

    def _fit_question(self, example: MCQExample, render, fixed_tokens: int) -> str | None:
        """Shorten the question (keeping its end) until the rendered prompt fits; None if it never can."""
        limit = self.config.max_length
        question = example.question
        if len(self._tokens(render(example, self.config, question), True)) + fixed_tokens <= limit:
            return question
        overhead = len(self._tokens(render(example, self.config, TRUNCATION_MARK), True)) + fixed_tokens
        budget = limit - overhead
        if budget < 8:
            return None
        q_ids = self._tokens(question, False)
        # Decoding token slices can re-tokenize slightly longer: shrink until it fits.
        keep = budget
        while keep >= 8:
            shortened = TRUNCATION_MARK + self.tokenizer.decode(q_ids[-keep:]).lstrip()
            if len(self._tokens(render(example, self.config, shortened), True)) + fixed_tokens <= limit:
                return shortened
            keep -= 4
        return None

    def encode_letter(self, examples: list[MCQExample], with_answer: bool) -> Encoded:
        """Prompt + answer letter; labels are -100 except the answer (or everything, if train_on_prompt)."""
        out = Encoded([])
        prompts = self._batch_tokens([render_letter_prompt(ex, self.config) for ex in examples], True)
        answers: dict[str, list[int]] = {}  # an answer's tokens, by its text
        for index, (ex, whole) in enumerate(zip(examples, prompts, strict=True)):
            answer_ids: list[int] = []
            if with_answer:
                if ex.answer is None:
                    raise ValueError(f"{ex.source}: training needs an answer")
                text = self.config.answer_format.format(letter=ex.answer_letter)
                answer_ids = answers.setdefault(text, self._tokens(text, False))
            prompt_ids = self._fitted_prompt(ex, render_letter_prompt, len(answer_ids), whole)
            if prompt_ids is None:
                out.skipped.append((index, "options alone exceed max_length"))
                continue
            ids = prompt_ids + answer_ids
            labels = list(ids) if self.config.train_on_prompt else [-100] * len(prompt_ids) + answer_ids
            out.features.append(
                LetterFeatures(
                    index=index,
                    input_ids=ids,
                    labels=labels,
                    prompt_length=len(prompt_ids),
                    letter_ids=self._letter_token_ids[: len(ex.choices)],
                    answer=ex.answer,
                )
            )
        return out

    def encode_cloze(self, examples: list[MCQExample]) -> Encoded:
        """Context ids and per-option continuation ids; every option must fit after the context."""
        out = Encoded([])
        prefix = self.config.cloze_option_prefix
        contexts = self._batch_tokens([render_cloze_context(ex, self.config) for ex in examples], True)
        every_option = iter(self._batch_tokens([prefix + c for ex in examples for c in ex.choices], False))
        for index, (ex, whole) in enumerate(zip(examples, contexts, strict=True)):
            options = [next(every_option) for _ in ex.choices]
            if any(len(o) == 0 for o in options):
                out.skipped.append((index, "an option tokenizes to nothing"))
                continue
            context = self._fitted_prompt(ex, render_cloze_context, max(len(o) for o in options), whole)
            if context is None:
                out.skipped.append((index, "an option alone exceeds max_length"))
                continue
            out.features.append(ClozeFeatures(index, context, options, ex.answer))
        return out

    def letter_prompt_length(self, example: MCQExample) -> int:
        """Token count of the full letter prompt with the answer (for `data check`)."""
        return len(self._tokens(render_letter_prompt(example, self.config), True)) + 1
