"""Measurement helpers for ``bench/run.py``: mcqtune's side of every comparison, peaks, FLOPs, timing.

Everything here is importable from tests (``tests/test_bench.py`` checks the correctness of what is
compared: packed cloze == K copies, the step counts real tokens); nothing here asserts a timing.
"""

from __future__ import annotations

import gc
import math
import os
import resource
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mcqtune.evaluation.evaluate import autocast_context
from mcqtune.prompt import ClozeFeatures
from mcqtune.scoring import cloze_forward, collate_cloze
from mcqtune.training.trainer import Trainer

MIB = 2**20


# ----------------------------------------------------------------------------------------- memory
def peak_rss_mib() -> float:
    """Peak resident set size of this process (VmHWM; ru_maxrss would include a forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def retained_growth(after_release: dict[int, float]) -> dict[str, Any]:
    """How much RSS stays right after the trainer's releases of freed memory (every
    ``RELEASE_EVERY_STEPS`` steps): what is alive plus what the heap cannot give back. A leak, or
    fragmentation a release cannot undo, shows as later releases keeping more than the first; the target
    is ``retained_late_over_early`` (the most any later release kept over the first) <= 1.1.

    Not RSS after any step: between releases the heap keeps the widest batch's activations for the next
    step, and within a step the peak follows the batch's width (a run meets wider batches as it goes:
    MedMCQA at batch 4, the widest per 50 steps is 114, 151, 216 and 247 tokens); both are recorded,
    neither measures growth.
    """
    if len(after_release) < 2:
        return {}
    steps = sorted(after_release)
    first, last = steps[0], steps[-1]
    return {
        "early_step": first,
        "late_step": last,
        "retained_rss_mib": {str(step): after_release[step] for step in steps},
        "last_over_early": round(after_release[last] / after_release[first], 3),
        "retained_late_over_early": round(max(after_release[s] for s in steps[1:]) / after_release[first], 3),
    }


# ----------------------------------------------------------------------------------------- matmul peak
def matmul_gflops(dtype: torch.dtype, n: int, seconds: float) -> float:
    """Sustained GFLOP/s of one n x n @ n x n matmul, repeated for about ``seconds``.

    A dtype this CPU only emulates (bf16 on an AVX2 host: ~0.6 GFLOP/s, four minutes for one 4096
    matmul) is measured at the largest halved size whose single matmul fits in ``seconds``: emulated
    throughput hardly depends on the size, and the benchmark should not spend a quarter-hour on it.
    """
    n = _size_that_fits(dtype, n, seconds)
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: kernel selection, page faults
    reps = 0
    start = time.perf_counter()
    while True:
        torch.mm(a, b, out=out)
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * n**3 * reps / elapsed / 1e9


def _size_that_fits(dtype: torch.dtype, n: int, seconds: float, probe: int = 512, slack: float = 4.0) -> int:
    """``n``, halved while one matmul would take over ``slack`` x ``seconds`` (best of five timed probes:
    a native dtype is never shrunk by one slow probe, an emulated one is 100x over)."""
    a = torch.randn(probe, probe).to(dtype)
    torch.mm(a, a)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, a)
        timings.append(time.perf_counter() - start)
    per_flop = min(timings) / (2 * probe**3)
    while n > probe and 2 * n**3 * per_flop > slack * seconds:
        n //= 2
    return n


def matmul_peaks(n: int = 2048, seconds: float = 0.5, rounds: int = 3) -> dict[str, float]:
    """Best-of-``rounds`` fp32 and bf16 matmul GFLOP/s, the two dtypes interleaved (same machine state)."""
    best = {"fp32": 0.0, "bf16": 0.0}
    for _ in range(rounds):
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            best[name] = max(best[name], matmul_gflops(dtype, n, seconds))
    return {k: round(v, 1) for k, v in best.items()}


# ----------------------------------------------------------------------------------------- FLOPs
def non_embedding_params(model: Any) -> int:
    """Parameters of the base transformer outside its (tied) embedding: what every token multiplies by.

    ``model`` is a model or its ``config`` (the count reads only the config, so a section that runs the
    model in another process need not load it). Counts frozen *and* trainable base weights but not
    method-added modules (LoRA A/B, adapters, prefixes); the input embedding is a lookup, and the LM head,
    tied to it here, runs only at the kept answer positions in mcqtune (it is counted nowhere, see
    :func:`train_flops_per_token`).
    """
    config = getattr(model, "config", model)
    hidden = config.hidden_size
    inter = config.intermediate_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", heads) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o + k, v
    mlp = 3 * hidden * inter  # gate, up, down (Llama-style gated MLP)
    norms = 2 * hidden
    return config.num_hidden_layers * (attention + mlp + norms) + hidden


def train_flops_per_token(n_non_embedding: int, trains_base: bool) -> int:
    """The usual estimate: forward 2N; backward 2N for activation gradients (+2N weight gradients when the
    base weights themselves are trained). Attention scores (QK^T, AV) are not counted: at the ~80-token
    MedMCQA prompts they add ~1% (see :func:`attention_flops_per_token`)."""
    return (6 if trains_base else 4) * n_non_embedding


def mfu(real_tokens_per_second: float, flops_per_token: float, peak_gflops: float) -> float:
    """Model FLOPs utilisation: useful FLOP/s (real tokens only: padding is not useful work) over the
    matmul peak of the precision the run computed in."""
    return real_tokens_per_second * flops_per_token / (peak_gflops * 1e9)


def real_token_share(real_tokens: int, computed_tokens: int | None) -> float | None:
    """Real (non-pad) tokens over the positions computed; None when the computed count is unknown."""
    if not computed_tokens:
        return None
    if real_tokens > computed_tokens:
        raise ValueError(f"real tokens {real_tokens} > computed tokens {computed_tokens}")
    return real_tokens / computed_tokens


def attention_flops_per_token(config: Any, mean_length: float, trains_base: bool = False) -> float:
    """QK^T and AV matmuls per token, causal (a token attends to (T+1)/2 positions on average)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    forward = 2 * 2 * config.num_hidden_layers * heads * head_dim * (mean_length + 1) / 2
    return forward * (3 if trains_base else 2)


# ----------------------------------------------------------------------------------------- timing
@dataclass
class Timings:
    """Per-step (or per-chunk) work and seconds; rates exclude the first ``warmup`` entries."""

    seconds: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    questions: list[int] = field(default_factory=list)

    def add(self, seconds: float, tokens: int, questions: int) -> None:
        self.seconds.append(seconds)
        self.tokens.append(tokens)
        self.questions.append(questions)

    def _window(self, warmup: int) -> slice:
        return slice(min(warmup, max(len(self.seconds) - 1, 0)), None)

    def tokens_per_second(self, warmup: int = 0) -> float:
        w = self._window(warmup)
        return sum(self.tokens[w]) / max(sum(self.seconds[w]), 1e-9)

    def questions_per_second(self, warmup: int = 0) -> float:
        w = self._window(warmup)
        return sum(self.questions[w]) / max(sum(self.seconds[w]), 1e-9)

    def median_seconds(self, warmup: int = 0) -> float:
        return statistics.median(self.seconds[self._window(warmup)])

    def to_dict(self, warmup: int = 0) -> dict[str, Any]:
        return {
            "entries": len(self.seconds),
            "warmup_excluded": min(warmup, max(len(self.seconds) - 1, 0)),
            "seconds_total": round(sum(self.seconds), 3),
            "median_seconds": round(self.median_seconds(warmup), 4) if self.seconds else None,
            "tokens_per_second": round(self.tokens_per_second(warmup), 1),
            "questions_per_second": round(self.questions_per_second(warmup), 3),
        }


def abba(n_rounds: int) -> Iterable[tuple[int, tuple[str, str]]]:
    """Round i runs A then B on even rounds and B then A on odd ones, so drift hits both sides alike."""
    for i in range(n_rounds):
        yield i, ("a", "b") if i % 2 == 0 else ("b", "a")


# ----------------------------------------------------------------------------------------- mcqtune step
class McqtuneStepper:
    """mcqtune's own :class:`~mcqtune.training.trainer.Trainer`, one step per call, with timings.

    The trainer is the one ``train()`` runs (build, objective, length-grouped stream, optimizer,
    scheduler, clipping, bf16 autocast); this wrapper only records what the benchmark compares.
    Its arguments are the Trainer's (the lever A/Bs pass ``prepare_base`` or ``model_hook``).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        self.trainer = Trainer(*args, **kwargs)
        self.timings = Timings()
        self.losses: list[float] = []

    # what the sections read, by the names they always used
    model = property(lambda self: self.trainer.model, lambda self, m: setattr(self.trainer, "model", m))
    objective = property(lambda self: self.trainer.objective)
    precision = property(lambda self: self.trainer.precision)
    features = property(lambda self: self.trainer.features)
    trainable = property(lambda self: self.trainer.trainable)

    def next_features(self) -> list[Any]:
        return self.trainer.next_features()

    def step(self, features: list[Any] | None = None, timings: Timings | None = None) -> float:
        """One optimizer step on ``features`` or the stream's next batch; returns its seconds and adds
        them to ``timings`` (default: ``self.timings``)."""
        result = self.trainer.step(features)
        (timings if timings is not None else self.timings).add(
            result.seconds, result.real_tokens, result.questions
        )
        self.losses.append(result.loss)
        return result.seconds


# ----------------------------------------------------------------------------------------- cloze
@torch.no_grad()
def cloze_logliks(
    model: torch.nn.Module,
    features: list[ClozeFeatures],
    pad_id: int,
    *,
    packed: bool,
    batch_size: int = 16,
    precision: str = "fp32",
) -> np.ndarray:
    """Summed option log-likelihoods (N, K_max; -inf where absent), packed or one row per option."""
    device = next(model.parameters()).device
    autocast = autocast_context(device, precision)
    n_options = max(len(f.option_ids) for f in features)
    out = np.full((len(features), n_options), -np.inf)
    for start in range(0, len(features), batch_size):
        group = features[start : start + batch_size]
        with autocast():
            scores = cloze_forward(
                model, collate_cloze(group, pad_id, packed=packed).to(device), normalize=False
            )
        out[start : start + len(group), : scores.shape[1]] = scores.float().cpu().numpy()
    return out


def option_lengths(features: list[ClozeFeatures], n_options: int) -> np.ndarray:
    """(N, K_max) token count of each option (1 where absent), to turn sums into per-token means."""
    out = np.ones((len(features), n_options))
    for i, f in enumerate(features):
        out[i, : len(f.option_ids)] = [len(o) for o in f.option_ids]
    return out


def max_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    finite = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return math.inf
    return float(np.abs(a[finite] - b[finite]).max()) if finite.any() else 0.0


def free_memory() -> None:
    gc.collect()
