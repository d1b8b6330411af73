"""Inference: one base model in memory, trained artifacts attached to it by name, one chosen per call.

A :class:`Predictor` loads each kind of base it needs once (the plain base, which zero-shot scoring also
uses; a 4-bit base per quantization layout for QLoRA), attaches run directories under names (and
detaches them, freeing what only they hold) and scores questions with one of them or with none
(zero-shot), or several LoRA artifacts' questions in one pass (``score_mixed``). Artifacts of methods
that share the base never copy its weights: each method keeps its artifacts on its own *view* of the
base (:func:`shared_view`: new module objects over the same tensors) so that peft's injected layers or
AdapterHub's modules never touch the base or another method; activating an artifact first deactivates
the previous one (subset artifacts swap tensors of the shared base in and out). A ``full`` artifact
replaces every weight, so it gets a model of its own (``Method.shares_base``). ``eval``, ``predict``,
``export`` and ``compare`` load through here.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from mcqtune.artifacts import ADAPTER_DIR, export_info
from mcqtune.config import resolve_scoring
from mcqtune.data import LETTERS, MAX_OPTIONS, MIN_OPTIONS, MCQExample
from mcqtune.errors import ArtifactError, DataError
from mcqtune.evaluation.analysis import AnalysisResult, run_analyses
from mcqtune.evaluation.evaluate import score_examples
from mcqtune.evaluation.metrics import ScoredExamples
from mcqtune.evaluation.temperature import (
    CALIBRATED,
    KIND_KEY,
    METRICS_KEY,
    UNCALIBRATED,
    eval_section,
    manifest_temperature,
    option_probabilities,
)
from mcqtune.methods import Method, get_method
from mcqtune.methods.base import (
    PLAIN_BASE,
    cast_frozen_matmul_weights,
    load_plain_base,
    store_linear_weights,
    untie_output_head,
)
from mcqtune.models import (
    config_hash,
    default_device,
    load_policy,
    load_tokenizer,
    resolve_model,
    resolve_precision,
)
from mcqtune.preflight import check_adapter_dir
from mcqtune.prompt import PromptConfig, PromptEncoder
from mcqtune.textgen import Generated, TokenLogprob, context_length, end_token_ids, greedy, prompt_logprobs


def shared_view(base: torch.nn.Module) -> torch.nn.Module:
    """New module objects over the base's own parameter and buffer tensors (nothing is copied)."""
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(base.parameters(), base.buffers())}
    return copy.deepcopy(base, memo)


def typed_question(question: str, choices: Sequence[str], example_id: str = "question") -> MCQExample:
    """A question a user typed (``predict --question``, a server request), or a DataError saying what
    is wrong with it."""
    if not question.strip():
        raise DataError("the question is empty")
    if not MIN_OPTIONS <= len(choices) <= MAX_OPTIONS:
        raise DataError(
            f"{len(choices)} options given; a question needs {MIN_OPTIONS} to {MAX_OPTIONS} "
            f"(A-{LETTERS[MAX_OPTIONS - 1]})"
        )
    blank = [LETTERS[i] for i, choice in enumerate(choices) if not choice.strip()]
    if blank:
        raise DataError(f"option {', '.join(blank)} is empty")
    return MCQExample(example_id, question.strip(), tuple(c.strip() for c in choices), None)


@dataclass(frozen=True)
class Artifact:
    """An attached run: where it came from, what its manifest says, which held model carries it."""

    name: str
    source: str  # the run directory as given
    manifest: dict[str, Any]
    method: Method
    holder: tuple[Method, str]  # key of the model that carries it in Predictor._holders

    @property
    def scoring(self) -> str:
        return self.manifest["scoring"]

    @property
    def prompt(self) -> PromptConfig:
        return PromptConfig.from_dict(self.manifest.get("prompt"))

    @property
    def options(self) -> dict[str, Any]:
        return self.manifest.get("method_options", {})

    @property
    def packed(self) -> bool:
        return self.manifest.get("packing", True)

    @property
    def temperature(self) -> float | None:
        """The calibration temperature fitted on its validation split (None: trained before that)."""
        return manifest_temperature(self.manifest)


@dataclass(frozen=True)
class Prediction:
    """One answered question: the chosen option and every option's probability, and whether those are
    calibrated (the artifact's temperature applied) or uncalibrated scores (a softmax over option
    scores: the zero-shot model, an artifact trained before calibration, debiased scores)."""

    example: MCQExample
    index: int
    probabilities: tuple[float, ...]
    raw_index: int  # before the letter prior was removed (== index without debiasing)
    debiased: bool
    probability_kind: str = UNCALIBRATED  # CALIBRATED or UNCALIBRATED (evaluation/temperature.py)

    @property
    def calibrated(self) -> bool:
        return self.probability_kind == CALIBRATED

    @property
    def letter(self) -> str:
        return LETTERS[self.index]

    @property
    def correct(self) -> bool | None:
        return None if self.example.answer is None else self.example.answer == self.index

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": self.example.id,
            "prediction": self.letter,
            "probabilities": {LETTERS[i]: round(p, 4) for i, p in enumerate(self.probabilities)},
            KIND_KEY: self.probability_kind,
        }
        if self.correct is not None:
            record["correct"] = self.correct
        if self.debiased:
            record.update(debiased=True, raw_prediction=LETTERS[self.raw_index])
        return record


def predictions(result: AnalysisResult) -> list[Prediction]:
    """Per-question records of a scoring result (debiased when a prior was applied), with calibrated
    probabilities where the artifact carries a temperature (:attr:`AnalysisResult.temperature`)."""
    final = result.debiased if result.debiased is not None else result.scored
    debiased = result.debiased is not None
    probabilities, kind = option_probabilities(final.scores, result.temperature, debiased)
    return [
        Prediction(
            example=example,
            index=int(index),
            probabilities=tuple(float(p) for p in probs[: len(example.choices)]),
            raw_index=int(raw),
            debiased=debiased,
            probability_kind=kind,
        )
        for example, probs, index, raw in zip(
            final.examples, probabilities, final.predictions, result.scored.predictions, strict=True
        )
    ]


class Predictor:
    """A base model loaded once, artifacts attached by name, questions scored with one of them or none.

    Thread-safe: one call at a time holds the model (activation changes shared state).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        device: torch.device | None = None,
        precision: str = "auto",
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
    ) -> None:
        self.resolved = resolve_model(model)
        self.device = device or default_device()
        self.precision = resolve_precision(precision, self.device)
        self.allow_pickle = allow_pickle
        self.trust_remote_code = trust_remote_code
        with self._loading():
            self.tokenizer = load_tokenizer(self.resolved)
        # mcqtune_export.json of a model directory written by `mcqtune export`: its prompt and scoring.
        self.exported = export_info(self.resolved)
        self.artifacts: dict[str, Artifact] = {}
        self._bases: dict[str, PreTrainedModel] = {}
        self._holders: dict[tuple[Method, str], torch.nn.Module] = {}
        self._active: Artifact | None = None
        self._lock = threading.RLock()

    @classmethod
    def open(
        cls, model: str | None, artifacts: Mapping[str, Path | str] | None = None, **kwargs: Any
    ) -> Predictor:
        """A Predictor with ``artifacts`` ({name: run dir}) attached, on ``model`` or else the first
        artifact's own base; with no artifact, the zero-shot base is loaded."""
        artifacts = dict(artifacts or {})
        if model is None and artifacts:
            first = next(iter(artifacts.values()))
            model = check_adapter_dir(first, allow_pickle=kwargs.get("allow_pickle", False))["base_model"]
        predictor = cls(model, **kwargs)
        for name, run_dir in artifacts.items():
            predictor.attach(name, run_dir)
        if not artifacts:
            predictor.base()
        return predictor

    @contextmanager
    def _loading(self) -> Iterator[None]:
        with load_policy(allow_pickle=self.allow_pickle, trust_remote_code=self.trust_remote_code):
            yield

    @property
    def model_id(self) -> str:
        return self.resolved.model_id

    @property
    def _linear_dtype(self) -> torch.dtype:
        """Under bf16 scoring every linear weight is stored in bf16: autocast rounds it to bf16 for each
        matmul anyway, so the scores are the same bit for bit, and the weights take half the memory."""
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def _prepared(self, base: PreTrainedModel) -> PreTrainedModel:
        store_linear_weights(base, self._linear_dtype)
        untie_output_head(base, self._linear_dtype)  # inference trains nothing: the head need not be tied
        return base.eval()

    def base(
        self, key: str = PLAIN_BASE, method: Method | None = None, options: dict | None = None
    ) -> PreTrainedModel:
        """The loaded base of kind ``key`` (``Method.base_key``), loaded on first use and then shared."""
        with self._lock:
            if key not in self._bases:
                with self._loading():
                    if method is None:
                        loaded = load_plain_base(self.resolved, self.device)
                    else:
                        loaded = method.load_base(self.resolved, options or {}, self.device)
                self._bases[key] = self._prepared(loaded)
            return self._bases[key]

    def attach(self, name: str, run_dir: Path | str) -> Artifact:
        """Attach the artifact in ``run_dir`` under ``name``; the base is loaded only if not yet held."""
        with self._lock:
            if name in self.artifacts:
                raise ArtifactError(f"an artifact named '{name}' is already attached")
            manifest = check_adapter_dir(run_dir, allow_pickle=self.allow_pickle)
            method = get_method(manifest["method"])
            options = manifest.get("method_options", {})  # Artifact.options once attached
            if method.shares_base:
                key = (method, method.base_key(options))
                base = self.base(key[1], method, options)
                self._check_base(run_dir, manifest, base)
                holder = self._holders.get(key) or shared_view(base)
            else:
                key = (method, f"own:{name}")
                with self._loading():
                    holder = method.load_base(self.resolved, options, self.device)
                self._check_base(run_dir, manifest, holder)
            self._deactivate()  # a subset artifact records the base's own tensors when it attaches
            held = {id(module) for module in holder.modules()}
            try:
                holder = method.attach(holder, Path(run_dir) / ADAPTER_DIR, options, name)
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise ArtifactError(
                    f"{run_dir}/{ADAPTER_DIR}: could not load the {manifest['method']} artifact: {exc}"
                ) from None
            if method.shares_base:
                # This artifact's own linear layers (LoRA, bottleneck adapters) too, when the method says
                # that is exact; nothing else is cast, and no base tensor is copied (the base's linear
                # weights are already stored so) nor another artifact's layer.
                if method.own_layers_in_inference_dtype(options):
                    added = torch.nn.ModuleList(m for m in holder.modules() if id(m) not in held)
                    cast_frozen_matmul_weights(added, self._linear_dtype, frozen_only=False)
                self._holders[key] = holder.eval()
            else:
                self._holders[key] = self._prepared(holder)
            self.artifacts[name] = Artifact(name, str(run_dir), manifest, method, key)
            return self.artifacts[name]

    def detach(self, name: str) -> None:
        """Remove artifact ``name`` and free the tensors only it holds (a server unloading the least
        recently used one); every other artifact keeps computing exactly as before."""
        with self._lock:
            artifact = self._artifact(name)
            if self._active is artifact:
                self._deactivate()
            del self.artifacts[name]
            if any(other.holder == artifact.holder for other in self.artifacts.values()):
                artifact.method.detach(self._holders[artifact.holder], name)
            else:
                del self._holders[artifact.holder]  # its last artifact: the whole view (or own model) goes

    def mix_key(self, adapter: str | None) -> tuple | None:
        """Artifacts with equal keys can be scored in one forward pass (:meth:`score_mixed`): their
        method mixes artifacts per row on the model that holds them all, and they score alike
        (formulation, prompt, packing). None: this one is scored on its own."""
        artifact = self._artifact(adapter)
        if artifact is None or not artifact.method.mixes_in_batch(
            artifact.manifest.get("method_options", {})
        ):
            return None
        prompt = json.dumps(artifact.prompt.to_dict(), sort_keys=True)
        return (artifact.holder, artifact.scoring, prompt, artifact.packed)

    def score_mixed(
        self, examples: list[MCQExample], adapters: Sequence[str], *, batch_size: int = 16
    ) -> ScoredExamples:
        """Score each example with its own artifact, all in shared forward passes; the artifacts must
        have one :meth:`mix_key`."""
        keys = {self.mix_key(name) for name in adapters}
        if len(keys) != 1 or None in keys:
            raise ArtifactError(f"artifacts {sorted(set(adapters))} cannot share a forward pass")
        with self._lock:
            first = self.artifacts[adapters[0]]
            return score_examples(
                self.module(first.name),
                PromptEncoder(self.tokenizer, first.prompt),
                examples,
                first.scoring,
                batch_size=batch_size,
                packed=first.packed,
                precision=self.precision,
                device=self.device,
                row_adapters=adapters,
            )

    def _check_base(self, run_dir: Path | str, manifest: dict[str, Any], base: PreTrainedModel) -> None:
        found = config_hash(base)
        if found != manifest["base_config_hash"]:
            raise ArtifactError(
                f"{run_dir}: trained on base model '{manifest['base_model']}' (config hash "
                f"{manifest['base_config_hash']}), but '{self.resolved.spec}' has config hash {found}; "
                "pass the matching --model"
            )

    def _artifact(self, name: str | None) -> Artifact | None:
        if name is None:
            return None
        if name not in self.artifacts:
            known = ", ".join(sorted(self.artifacts)) or "none"
            raise ArtifactError(f"no artifact named '{name}' is attached (attached: {known})")
        return self.artifacts[name]

    def _deactivate(self) -> None:
        if self._active is not None:
            self._active.method.activate(self._holders[self._active.holder], None)
            self._active = None

    def module(self, adapter: str | None = None) -> torch.nn.Module:
        """The model that computes as artifact ``adapter`` (None: the base, zero-shot), made active."""
        with self._lock:
            artifact = self._artifact(adapter)
            if artifact is not self._active:
                self._deactivate()
            if artifact is None:
                return self.base()
            model = artifact.method.activate(self._holders[artifact.holder], artifact.name)
            self._active = artifact
            return model

    def scoring(self, adapter: str | None = None) -> str:
        """The artifact's trained formulation; zero-shot: the exported model's, else the auto rule."""
        artifact = self._artifact(adapter)
        if artifact is not None:
            return artifact.scoring
        if self.exported and self.exported.get("scoring"):
            return self.exported["scoring"]
        return resolve_scoring("auto", self.base().num_parameters())

    def temperature(self, adapter: str | None = None) -> float | None:
        """The artifact's calibration temperature; None for the zero-shot base and older artifacts."""
        artifact = self._artifact(adapter)
        return artifact.temperature if artifact is not None else None

    def prompt(self, adapter: str | None = None) -> PromptConfig:
        artifact = self._artifact(adapter)
        if artifact is not None:
            return artifact.prompt
        return PromptConfig.from_dict((self.exported or {}).get("prompt"))

    def score(
        self,
        examples: list[MCQExample],
        adapter: str | None = None,
        scoring: str | None = None,
        *,
        batch_size: int = 16,
        prompt: PromptConfig | None = None,
        packed: bool | None = None,
        **analyses: Any,
    ) -> AnalysisResult:
        """Score ``examples`` with artifact ``adapter`` (None: zero-shot). ``scoring``, ``prompt`` and
        ``packed`` default to the artifact's own; ``analyses`` are :func:`run_analyses`' options
        (permutations, debias_prior, prior, calibration_examples, calibration_size, seed...)."""
        with self._lock:
            artifact = self._artifact(adapter)
            model = self.module(adapter)
            result = run_analyses(
                model,
                PromptEncoder(self.tokenizer, prompt or self.prompt(adapter)),
                examples,
                scoring or self.scoring(adapter),
                model_id=self.model_id,
                adapter=artifact.source if artifact else None,
                batch_size=batch_size,
                packed=packed if packed is not None else (artifact.packed if artifact else True),
                precision=self.precision,
                device=self.device,
                **analyses,
            )
        # Calibrated probabilities where the artifact carries a temperature; eval reports which.
        result.temperature = self.temperature(adapter)
        if result.scored is not None and result.scored.examples:
            result.sections[METRICS_KEY] = eval_section(result.scored, result.temperature)
        return result

    # ------------------------------------------------------------ plain language modelling (OpenAI API)

    def context_length(self) -> int:
        """The longest prompt + completion the base takes, in tokens."""
        return context_length(self.base())

    def end_token_ids(self) -> set[int]:
        return end_token_ids(self.base(), self.tokenizer)

    def prompt_logprobs(
        self, adapter: str | None, rows: Sequence[Sequence[int]], top_k: int = 0
    ) -> list[tuple[list[TokenLogprob | None], TokenLogprob]]:
        """Each prompt token's log-probability under artifact ``adapter`` (None: the base), and the
        greedy next token (:func:`mcqtune.textgen.prompt_logprobs`)."""
        with self._lock:
            model = self.module(adapter)
            pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            return prompt_logprobs(
                model, rows, top_k, precision=self.precision, device=self.device, pad_id=pad_id
            )

    def generate(
        self, adapter: str | None, prompt: Sequence[int], max_new_tokens: int, **options: Any
    ) -> Generated:
        """Greedy generation with artifact ``adapter``; ``options`` are :func:`mcqtune.textgen.greedy`'s."""
        with self._lock:
            model = self.module(adapter)
            return greedy(
                model,
                self.tokenizer,
                prompt,
                max_new_tokens,
                precision=self.precision,
                device=self.device,
                **options,
            )
