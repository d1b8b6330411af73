"""The one small interface every fine-tuning method implements, and the registry that finds them.

A method knows how to (1) load the base model it needs (QLoRA quantizes it), (2) turn it into the model
to train (wrap, insert modules or freeze), (3) save only what it trained and (4) attach saved artifacts,
each under a name, to an already loaded base and make one of them the one in effect (``attach`` /
``activate``: :class:`mcqtune.inference.Predictor` holds one base and many artifacts this way). The
training loop, scoring and evaluation never branch on the method.

Per-method defaults (learning rate, rank, bottleneck size...) live in ``configs/methods/<name>.yaml``.
"""

from __future__ import annotations

import hashlib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel

from mcqtune.errors import ConfigError, UserError
from mcqtune.method_files import PRESET_OF, method_presets
from mcqtune.models import ResolvedModel, load_model

# base_key() of every method whose artifacts attach to the plain (unquantized) base, as zero-shot uses it.
PLAIN_BASE = "plain"
# The name load() gives the one artifact it attaches.
SINGLE_ARTIFACT = "default"
# Attribute a method's apply() may set on a trainable parameter: its learning rate is this multiple of the
# configured one (LoRA+ trains B faster than A); make_optimizer puts each multiple in a group of its own.
LR_RATIO = "mcqtune_lr_ratio"


@dataclass
class ParameterReport:
    """What a user wants to know before training: how much is trained and what the frozen base costs."""

    trainable: int
    total: int
    frozen_base_bytes: int

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trainable": self.trainable,
            "total": self.total,
            "trainable_percent": round(self.trainable_percent, 4),
            "frozen_base_bytes": self.frozen_base_bytes,
        }

    def describe(self) -> str:
        return (
            f"trainable params: {self.trainable:,} of {self.total:,} ({self.trainable_percent:.3f}%), "
            f"frozen base weights: {self.frozen_base_bytes / 2**20:.1f} MiB"
        )


def _storage_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _logical_numel(param: torch.Tensor) -> int:
    """bitsandbytes packs two 4-bit values per byte; report the logical parameter count."""
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return int(torch.Size(quant_state.shape).numel())
    return param.numel()


def parameter_report(model: torch.nn.Module) -> ParameterReport:
    trainable = total = frozen_bytes = 0
    seen: set[int] = set()
    for param in model.parameters():
        if id(param) in seen:  # tied embeddings count once
            continue
        seen.add(id(param))
        n = _logical_numel(param)
        total += n
        if param.requires_grad:
            trainable += n
        else:
            frozen_bytes += _storage_bytes(param)
    return ParameterReport(trainable, total, frozen_bytes)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the trained tensors (for best-checkpoint snapshots and change tests)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """Hash of tensors by name, for proving which weights changed."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_peft_artifact(model: torch.nn.Module, directory: Path, name: str = SINGLE_ARTIFACT) -> None:
    """Raise ValueError unless every tensor of a saved peft adapter landed in ``model`` (as adapter
    ``name``) unchanged.

    ``PeftModel.from_pretrained`` and ``load_adapter`` only warn about adapter weights they cannot place
    (e.g. a LoRA layer the base lacks), which would silently give a different model.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(Path(directory) / "adapter_model.safetensors"))
    loaded = get_peft_model_state_dict(model, adapter_name=name)
    problems = sorted(set(saved) ^ set(loaded))
    problems += [
        n
        for n in sorted(set(saved) & set(loaded))
        if loaded[n].shape != saved[n].shape or not torch.equal(loaded[n].detach().cpu(), saved[n])
    ]
    if problems:
        raise ValueError(f"adapter weights do not fit this base model: {', '.join(problems[:5])}")


def cast_frozen_matmul_weights(
    model: torch.nn.Module, dtype: torch.dtype, *, frozen_only: bool = True
) -> int:
    """Store the weights (and biases) of the model's ``nn.Linear`` layers in ``dtype``; returns bytes saved.

    Under bf16 autocast every linear layer casts an fp32 weight to bf16 on each call (frozen weights are
    not in autocast's cast cache), so storing frozen weights in bf16 gives bit-identical results with half
    their memory and without that per-call cast (docs/PERFORMANCE.md). ``frozen_only`` skips tensors that
    require grad; pass False on a freshly loaded base whose method freezes it afterwards. Left as they are:
    the input embedding and an LM head tied to it (the embedding feeds the fp32 residual stream, which
    autocast never rounds) and non-floating weights (4-bit/8-bit quantized layers).
    """
    if dtype == torch.float32:
        return 0
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = {id(p) for p in embedding.parameters()} if embedding is not None else set()
    saved = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        for param in (module.weight, module.bias):
            if (
                param is None
                or id(param) in tied
                or not param.is_floating_point()
                or param.dtype == dtype
                or (frozen_only and param.requires_grad)
            ):
                continue
            before = _storage_bytes(param)
            param.data = param.data.to(dtype)
            saved += before - _storage_bytes(param)
    return saved


def release_mapped_weights(model: torch.nn.Module) -> None:
    """Copy the full-precision tensors left after a cast or quantization into private memory.

    The base's safetensors file is memory-mapped: its tensors are views of the file. After the linear
    weights are cast to bf16 (or quantized to 4 bits) their fp32 file pages are never read again, but
    the embedding, norms and buffers still point into the mapping, so the kernel keeps all ~500 MiB of
    read pages resident (RssFile) for the whole run. Copying those few tensors (the embedding: 108 MiB)
    drops the last reference to the mapping and those pages with it (measured: RSS 1065 -> 767 MiB for
    the QLoRA base, docs/PERFORMANCE.md). A tied LM head is the same Parameter and stays tied.
    """
    with torch.no_grad():
        for module in model.modules():
            for param in module.parameters(recurse=False):
                if param.dtype == torch.float32:
                    param.data = param.data.clone()
            for name, buffer in list(module.named_buffers(recurse=False)):
                if buffer is not None and buffer.is_floating_point():
                    module._buffers[name] = buffer.clone()


def load_plain_base(resolved: ResolvedModel, device: torch.device) -> PreTrainedModel:
    """The base as zero-shot scoring and every method without a ``load_base`` of its own use it: fp32."""
    return load_model(resolved, torch.float32).to(device)


def store_linear_weights(base: torch.nn.Module, dtype: torch.dtype) -> None:
    """Store a freshly loaded base's linear weights in ``dtype``; drop the file pages left unused."""
    if cast_frozen_matmul_weights(base, dtype, frozen_only=False):
        release_mapped_weights(base)


def untie_output_head(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Give an LM head tied to the input embedding its own frozen copy in ``dtype``; returns its bytes.

    For inference under bf16 only. The embedding stays fp32 (it feeds the fp32 residual stream), so under
    autocast a tied head casts the whole 49k x 576 matrix to bf16 on every forward pass: measured, ~15% of
    a one-question forward of the bundled model (docs/PERFORMANCE.md). A bf16 copy gives the same numbers
    bit for bit (autocast rounds the weight to the same bf16 values) for 56 MiB more.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if dtype == torch.float32 or head is None or embedding is None or head.weight is not embedding.weight:
        return 0
    head.weight = torch.nn.Parameter(embedding.weight.detach().to(dtype), requires_grad=False)
    return _storage_bytes(head.weight)


def untied_head_copy(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state``'s tensor for an LM head that :func:`untie_output_head` separated from the embedding, when
    ``state`` replaces that embedding (a subset artifact that trained it): {head name: its copy}, else {}.
    Without it the untied head would keep the base's embedding while the artifact changed it."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if head is None or embedding is None or head.weight is embedding.weight:
        return {}
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    trained = state.get(names.get(id(embedding.weight), ""))
    head_name = names.get(id(head.weight))
    if trained is None or head_name is None or head_name in state or not model.config.tie_word_embeddings:
        return {}
    return {head_name: trained.to(head.weight.dtype)}


def check_master_weights(model: torch.nn.Module, method_name: str) -> None:
    """Trained parameters must be fp32 (the optimizer updates them in place): a method that trains base
    weights must not let :meth:`Method.prepare_base` store them in bf16 (set ``frozen_base = False``)."""
    wrong = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)
    ]
    if wrong:
        raise RuntimeError(
            f"method '{method_name}' trains half-precision parameters ({', '.join(wrong[:3])}): "
            "a method that trains base weights must set frozen_base = False"
        )


def lr_groups(params: list[torch.nn.Parameter], lr: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups, one per learning-rate multiple (:data:`LR_RATIO`), in first-seen order
    (deterministic, so a resumed run's optimizer state fits its groups)."""
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for param in params:
        groups.setdefault(getattr(param, LR_RATIO, 1.0), []).append(param)
    return [{"params": members, "lr": lr * ratio} for ratio, members in groups.items()]


class Method(ABC):
    """A fine-tuning method. Subclasses are registered with :func:`register`."""

    name: ClassVar[str]
    description: ClassVar[str]
    # The method this one is a named preset of (configs/methods/<name>.yaml ``preset_of``), else None.
    preset_of: ClassVar[str | None] = None
    # Whether scoring may pass a 4D attention mask and position ids (packed cloze options) and a key/value
    # cache of its own (a letter batch's shared prompt start).
    supports_packing: ClassVar[bool] = True
    # Whether --gradient-checkpointing may recompute the decoder layers (transformers drops a layer's
    # key/value cache when it checkpoints, and with it a prefix held there).
    supports_gradient_checkpointing: ClassVar[bool] = True
    # True when apply() freezes every base weight. Under bf16 the frozen matmul weights are then stored in
    # bf16 (prepare_base). Methods that train base weights (full, subset) set False: fp32 master weights.
    frozen_base: ClassVar[bool] = True
    # Place in `compare` with no --methods (ascending, then by name): most trained parameters first.
    compare_order: ClassVar[int] = 1000
    # Measured cost under `compare`'s default budget (idle 2-core CPU, bundled SmolLM2-135M, ARC-Easy
    # cloze, batch 4, bf16; mcqtune/compare/plan.py says how): seconds per optimizer step and per
    # scored question. `compare` prints its time estimate from them; the defaults are the base model's
    # own scoring rate and a guess for an unmeasured method.
    step_seconds: ClassVar[float] = 1.0
    eval_seconds_per_question: ClassVar[float] = 0.054
    # Largest option-score difference (nats) `export` accepts between the merged and the unmerged model.
    export_tolerance: ClassVar[float] = 1e-4
    # False when an artifact replaces every base weight (full): it cannot share a base with other
    # artifacts, so an inference Predictor loads a model of its own for each one.
    shares_base: ClassVar[bool] = True

    def packs(self, requested: bool) -> bool:
        """Whether this method trains and is scored with packed cloze options: when ``--packing`` asks for
        it and the method can. One rule, read by the trainer and by every evaluation of a run."""
        return requested and self.supports_packing

    def own_layers_in_inference_dtype(self, options: dict[str, Any]) -> bool:
        """Whether bf16 inference may store the artifact's own linear layers in bf16 (half their memory,
        no cast per call) and still score exactly as the trained model: true when each layer is only ever
        a matmul under autocast, which rounds its fp32 master weight to the same bf16 values."""
        return True

    def base_key(self, options: dict[str, Any]) -> str:
        """Which loaded base this method's artifacts attach to: artifacts with equal keys share one base.
        A method that overrides :meth:`load_base` returns a key of its own (QLoRA: the 4-bit layout)."""
        return PLAIN_BASE

    def run_options(self, options: dict[str, Any], precision: str) -> dict[str, Any]:
        """The options a run uses, given its resolved precision: where an option's value is ``auto``
        because the right answer depends on the precision (QLoRA's ``compute_dtype``). Default: as given."""
        return options

    def load_base(
        self, resolved: ResolvedModel, options: dict[str, Any], device: torch.device
    ) -> PreTrainedModel:
        """The base model this method trains on (fp32 master weights by default)."""
        return load_plain_base(resolved, device)

    def base_dtype(self, precision: str) -> torch.dtype:
        """dtype of the frozen base's matmul weights for training at ``precision`` (bf16 or fp32)."""
        return torch.bfloat16 if precision == "bf16" and self.frozen_base else torch.float32

    def prepare_base(self, base: PreTrainedModel, precision: str) -> PreTrainedModel:
        """Called on the loaded base before :meth:`apply`: under bf16, store its linear weights in bf16.

        Bit-identical under bf16 autocast, half the frozen-weight memory, no per-step weight cast
        (:func:`cast_frozen_matmul_weights`); fp32 precision leaves the base untouched.
        """
        store_linear_weights(base, self.base_dtype(precision))
        return base

    def quantized_weight_bytes(self, options: dict[str, Any]) -> float | None:
        """Bytes per weight of the base's quantized linear layers, None when the base is not quantized
        (``mcqtune estimate`` sizes the frozen base from it, without loading weights)."""
        return None

    def optimizer_state_bytes(self, options: dict[str, Any]) -> float:
        """Bytes of optimizer state per trainable parameter (AdamW: two fp32 moments), for the estimator."""
        return 8.0

    def make_optimizer(
        self, params: list[torch.nn.Parameter], config: Any, device: torch.device
    ) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters, fused kernel (CPU and CUDA): on CPU it is ~4x faster than
        foreach over LoRA's 420 small tensors (docs/PERFORMANCE.md)."""
        lr = config.lr if config.lr is not None else 1e-4
        return torch.optim.AdamW(
            lr_groups(params, lr),
            lr=lr,
            weight_decay=config.weight_decay or 0.0,
            fused=device.type in ("cpu", "cuda"),
        )

    @abstractmethod
    def apply(self, model: PreTrainedModel, options: dict[str, Any]) -> torch.nn.Module:
        """Return the model to train, with only this method's parameters requiring grad."""

    @abstractmethod
    def save(self, model: torch.nn.Module, directory: Path) -> None:
        """Write only what was trained, as safetensors, into ``directory`` (which exists)."""

    @abstractmethod
    def attach(
        self, model: torch.nn.Module, directory: Path, options: dict[str, Any], name: str
    ) -> torch.nn.Module:
        """Add the artifact saved in ``directory`` to ``model`` under ``name``, without changing what the
        other attached artifacts compute. ``model`` is the loaded base on the first call for a base and
        afterwards what the previous call returned; returns the model that now holds them all. Raises
        ValueError (or the loader's own error) when the artifact does not fit the base."""

    def activate(self, model: torch.nn.Module, name: str | None) -> torch.nn.Module:
        """Make the artifact ``name`` the one in effect (None: none of this method's, so that the base
        computes as loaded) and return the module to run. The default suits one artifact per model."""
        return model

    def detach(self, model: torch.nn.Module, name: str) -> None:
        """Remove the attached artifact ``name`` from ``model``, which holds others too, and free its tensors.
        (A model whose last artifact goes is dropped whole by its owner; a method that cannot hold several
        artifacts on one model never gets this call.)"""
        raise NotImplementedError(f"method '{self.name}' cannot remove one of several attached artifacts")

    def mixes_in_batch(self, options: dict[str, Any]) -> bool:
        """Whether this method's artifacts on one model can share a forward pass, each row naming its own
        artifact (peft's per-row ``adapter_names``)."""
        return False

    def load(self, base: PreTrainedModel, directory: Path, options: dict[str, Any]) -> torch.nn.Module:
        """Attach one saved artifact to a freshly loaded base, ready for inference."""
        model = self.attach(base, directory, options, SINGLE_ARTIFACT)
        return self.activate(model, SINGLE_ARTIFACT).eval()

    def merge(self, model: torch.nn.Module) -> PreTrainedModel:
        """Fold the trained parameters into a plain HF model (only methods that can)."""
        raise NotImplementedError(f"method '{self.name}' cannot be merged into the base model")


@contextmanager
def option_errors(method_name: str, options: dict[str, Any]) -> Iterator[None]:
    """Methods report bad options with ValueError; to the user that is a config error."""
    try:
        yield
    except UserError:
        raise
    except ValueError as exc:
        raise ConfigError(f"method '{method_name}' (options {options}): {exc}") from exc


def option_choice(options: dict[str, Any], key: str, allowed: Iterable[str], method_name: str) -> str:
    """Option ``key`` as one of the ``allowed`` names (case-insensitive); ValueError naming them if not."""
    value = str(options[key]).lower()
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{method_name}: {key} must be one of {', '.join(allowed)}, got '{value}'")
    return value


def positive_int_option(options: dict[str, Any], key: str, method_name: str) -> int:
    value = int(options[key])
    if value < 1:
        raise ValueError(f"{method_name}: {key} must be positive, got {value}")
    return value


METHODS: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls()
    return cls


def register_presets() -> None:
    """Register every preset in configs/methods/ as a method of its own name: the class of the method it
    presets, so it has every capability of that method; only its name, description and defaults differ."""
    for name, file in method_presets().items():
        parent = get_method(file[PRESET_OF])
        attributes = {"name": name, "description": file["description"], "preset_of": parent.name}
        register(type(f"{type(parent).__name__}[{name}]", (type(parent),), attributes))


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method '{name}'; choose one of: {', '.join(sorted(METHODS))}") from None


class PeftMethod(Method):
    """A method whose artifact is a standard peft adapter directory; artifacts attach as named adapters
    of one ``PeftModel`` and every one is checked to have landed whole (:func:`check_peft_artifact`)."""

    def check_fits(self, config: Any, directory: Path) -> None:
        """Raise ValueError when the saved adapter cannot fit a base with this HF ``config``."""

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        model.save_pretrained(str(directory), safe_serialization=True)

    def attach(
        self, model: torch.nn.Module, directory: Path, options: dict[str, Any], name: str
    ) -> torch.nn.Module:
        from peft import PeftModel

        shared = isinstance(model, PeftModel)
        self.check_fits((model.get_base_model() if shared else model).config, directory)
        if not shared:
            model = PeftModel.from_pretrained(model, str(directory), adapter_name=name, is_trainable=False)
            check_peft_artifact(model, directory, name)
            return model
        model.load_adapter(str(directory), adapter_name=name, is_trainable=False)
        try:
            check_peft_artifact(model, directory, name)
        except ValueError:
            model.delete_adapter(name)  # the artifacts attached before stay as they were
            raise
        return model

    def activate(self, model: torch.nn.Module, name: str | None) -> torch.nn.Module:
        if name is not None:
            model.set_adapter(name)
        return model

    def detach(self, model: torch.nn.Module, name: str) -> None:
        with warnings.catch_warnings():  # "was active, now deleted": the caller has switched it off
            warnings.filterwarnings("ignore", message=".*was active which is now deleted")
            model.delete_adapter(name)


class MergeablePeftMethod(PeftMethod):
    """A peft method whose update folds into the base's own weights (LoRA, IA3, LayerNorm tuning), so
    ``mcqtune export`` can write a plain model."""

    def merge(self, model: torch.nn.Module) -> PreTrainedModel:
        return model.merge_and_unload()
