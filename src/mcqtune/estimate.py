"""``mcqtune estimate``: per-device training memory from a model's ``config.json`` alone (no weights).

The model is built on the ``meta`` device (``accelerate.init_empty_weights``: shapes and dtypes, no
storage), the method prepares and applies itself exactly as in training (``Method.prepare_base`` stores
frozen linear weights in bf16, ``Method.apply`` decides what trains), and the parameters are counted:

- weights: the frozen base in its stored dtype; the linear layers of a quantized base (the method's
  :meth:`~mcqtune.methods.base.Method.quantized_weight_bytes`) at their packed size including scales;
- trainable: the trained parameters (fp32 master weights); gradients: the same size again (x2 under
  DDP with more than one process: its all-reduce buckets are a second copy);
- optimizer: :meth:`~mcqtune.methods.base.Method.optimizer_state_bytes` per trainable parameter;
- activations: what one micro-batch's forward keeps for the backward, per decoder layer from the
  hidden/intermediate/key-value sizes (:func:`activation_bytes`), plus the LM head's scored positions;
- overhead: allocator slack and kernels' workspaces (:data:`OVERHEAD_FRACTION` of the rest, at least
  :data:`OVERHEAD_MIN_BYTES`).

With ``--sharding`` ZeRO-2 divides optimizer state and gradients by the number of processes, ZeRO-3 and
FSDP divide the weights and trainable parameters too; activations stay whole on every device (only
autocast's bf16 copies of fp32 weights follow the weights they copy). The figures are
checked against measured peak memory of real training runs (docs/SCALING.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig

from mcqtune.config import OBJECTIVE_TO_SCORING, method_defaults, resolve_objective
from mcqtune.errors import ConfigError, ModelError, UserError
from mcqtune.methods import get_method
from mcqtune.methods.base import Method, option_errors
from mcqtune.models import DEFAULT_MODEL

SHARDINGS = ("none", "zero2", "zero3", "fsdp")
# Which parts each sharding strategy splits across the processes.
SHARDED_PARTS = {
    "none": (),
    "zero2": ("optimizer", "gradients"),
    "zero3": ("optimizer", "gradients", "weights", "trainable"),
    "fsdp": ("optimizer", "gradients", "weights", "trainable"),
}
PRECISIONS = {"bf16": 2, "fp32": 4}


def cast_copy_bytes(precision: str) -> int:
    """Bytes per value of autocast's copy of an fp32 input cast for a matmul: none in fp32, which runs
    without autocast (the input is a tensor the layer keeps anyway)."""
    return 0 if precision == "fp32" else PRECISIONS[precision]


OVERHEAD_FRACTION = 0.10
OVERHEAD_MIN_BYTES = 64 * 2**20
SCORED_FRACTION = {"letter": 0.0, "cloze": 0.5}  # of each sequence's positions that reach the LM head


def shipped_model_names() -> list[str]:
    """Short names of the model configs shipped in ``configs/models/`` (``--model llama-3.1-8b``)."""
    folder = resources.files("mcqtune") / "configs" / "models"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load_model_config(spec: str | None) -> PretrainedConfig:
    """A shipped short name, a ``config.json`` file, a directory holding one, or any ``--model`` spec."""
    from mcqtune.models import resolve_model

    shipped = resources.files("mcqtune") / "configs" / "models" / f"{(spec or '').lower()}.json"
    if spec and shipped.is_file():
        return _config_from_dict(json.loads(shipped.read_text(encoding="utf-8")), str(shipped))
    if spec and Path(spec).is_file():
        try:
            data = json.loads(Path(spec).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{spec}: not a JSON model config: {exc}") from None
        return _config_from_dict(data, spec)
    hint = f"shipped model configs: {', '.join(shipped_model_names())}"
    try:
        resolved = resolve_model(spec)
    except ModelError as exc:
        raise ModelError(f"{exc}; {hint}") from None
    try:
        return AutoConfig.from_pretrained(resolved.path)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"could not read the config of model '{resolved.spec}': {str(exc).rstrip('.')}. "
            f"Offline, pass a directory holding its config.json, or one of the {hint}"
        ) from None


def _config_from_dict(data: Any, source: str) -> PretrainedConfig:
    if not isinstance(data, dict) or "model_type" not in data:
        raise ModelError(f"{source}: field 'model_type' missing: not a Hugging Face model config")
    data = dict(data)
    try:
        return AutoConfig.for_model(data.pop("model_type"), **data)
    except (KeyError, ValueError) as exc:
        raise ModelError(f"{source}: unsupported model config: {exc}") from None


def model_on_meta(
    config: PretrainedConfig, method: Method, precision: str, options: dict[str, Any]
) -> tuple[torch.nn.Module, set[int]]:
    """The model to train, built with no storage (the method prepares and applies itself as in training),
    and the ids of the base's own linear layers (what the method added is the rest)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        base = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # init_empty_weights re-wraps every assigned Parameter, which would untie a tied LM head: tie outside.
    base.tie_weights()
    base.config.use_cache = False
    base_linears = {id(m) for m in base.modules() if isinstance(m, torch.nn.Linear)}
    with init_empty_weights(), option_errors(method.name, options):
        method.prepare_base(base, precision)
        try:
            return method.apply(base, options), base_linears
        except (UserError, ValueError):  # bad options: reported as such by option_errors
            raise
        except Exception as exc:  # e.g. prefix's text initialisation runs the model and its tokenizer
            raise ConfigError(
                f"method '{method.name}' with options {options} cannot be built without the model's "
                f"weights ({exc}); choose options that do not read them"
            ) from None


@dataclass(frozen=True)
class ParameterBytes:
    """Counted on the model to train: parameters and their stored bytes."""

    total_params: int
    trainable_params: int
    trainable_bytes: int
    frozen_bytes: int
    added_linear_inputs: int  # in_features summed over the trainable linear layers the method added
    quantized_linear_inputs: int  # in_features summed over the quantized linear layers
    fp32_matmul_weights: int  # elements of fp32 linear weights (bf16 autocast keeps a bf16 copy of each)


def count_parameters(
    model: torch.nn.Module, quantized_weight_bytes: float | None, base_linears: set[int]
) -> ParameterBytes:
    """Tied tensors count once; a quantized base's frozen linear weights (not the LM head, which
    transformers keeps out of 4 bits) count at ``quantized_weight_bytes`` each."""
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    quantized_layers = []
    if quantized_weight_bytes is not None:
        quantized_layers = [m for m in linears if id(m) in base_linears and m is not head]
    quantized = {id(m.weight) for m in quantized_layers}
    added_inputs = sum(m.in_features for m in linears if id(m) not in base_linears and m.weight.requires_grad)
    fp32_weights = {
        id(m.weight): m.weight.numel()
        for m in linears
        if id(m.weight) not in quantized and m.weight.dtype == torch.float32
    }
    total = trainable = trainable_bytes = frozen_bytes = 0
    seen: set[int] = set()
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
            trainable_bytes += param.numel() * param.element_size()
        elif id(param) in quantized:
            frozen_bytes += int(param.numel() * quantized_weight_bytes)
        else:
            frozen_bytes += param.numel() * param.element_size()
    return ParameterBytes(
        total,
        trainable,
        trainable_bytes,
        frozen_bytes,
        added_inputs,
        sum(m.in_features for m in quantized_layers),
        sum(fp32_weights.values()),
    )


def activation_bytes(
    config: PretrainedConfig,
    tokens: int,
    precision: str,
    *,
    gradient_checkpointing: bool = False,
    scored_tokens: int = 0,
    added_linear_inputs: int = 0,
    quantized_linear_inputs: int = 0,
    added_input_bytes: int = 4,
) -> int:
    """What the forward of ``tokens`` tokens keeps for the backward (memory-efficient attention: no
    sequence x sequence scores).

    Per decoder layer and token: the two RMSNorms work in fp32 and keep their input and output (4 x hidden
    fp32 values); attention keeps its cast input, q, k, v, the rotated q and k, its output and the o_proj
    input (5 x hidden + 3 x key-value width, compute dtype); the MLP keeps its cast input and the gate,
    SiLU, up and product tensors (hidden + 4 x intermediate). With gradient checkpointing only each layer's
    fp32 input is kept, and one layer's activations are rebuilt at a time. The LM head keeps fp32 logits,
    their log-softmax and gradient for each scored position (3 x vocab x 4 bytes).

    A method's own trainable linear layers (LoRA's A and B, adapter projections) keep their input per
    token: ``added_input_bytes`` each, 4 when a dropout makes a new fp32 tensor of it, else the
    compute dtype's cast copy; bitsandbytes' 4-bit matmul keeps its input (compute dtype)
    although its weight needs no gradient. In fp32 there is no autocast, so neither cast copy exists:
    those inputs are tensors the layer keeps anyway. Checked against the tensors autograd saves on the
    bundled architecture and against measured peaks (docs/SCALING.md; fp32: an AVX2 CPU, 2026-12-02).
    """
    hidden = config.hidden_size
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_width = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    compute = PRECISIONS[precision]
    per_layer = 4 * hidden * 4 + compute * (5 * hidden + 3 * kv_width + hidden + 4 * config.intermediate_size)
    cast_copy = cast_copy_bytes(precision)
    per_layer += (added_input_bytes * added_linear_inputs + cast_copy * quantized_linear_inputs) / layers
    kept = layers * 4 * hidden + per_layer if gradient_checkpointing else layers * per_layer
    return int(tokens * kept + scored_tokens * 3 * 4 * config.vocab_size)


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-device bytes of one training process."""

    model: str
    method: str
    precision: str
    objective: str
    batch_size: int
    max_length: int
    num_processes: int
    sharding: str
    gradient_checkpointing: bool
    total_params: int
    trainable_params: int
    weights_bytes: int
    trainable_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    overhead_bytes: int
    total_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format_text(self) -> str:
        from mcqtune.preflight import gib

        rows = [
            ("weights (frozen base)", self.weights_bytes),
            ("trainable (fp32 master)", self.trainable_bytes),
            ("gradients", self.gradients_bytes),
            ("optimizer state", self.optimizer_bytes),
            ("activations", self.activations_bytes),
            ("overhead", self.overhead_bytes),
            ("total per device", self.total_bytes),
        ]
        checkpointing = "on" if self.gradient_checkpointing else "off"
        head = (
            f"{self.model}, method {self.method}, {self.precision}, objective {self.objective}, "
            f"batch {self.batch_size} x {self.max_length} tokens, {self.num_processes} process(es), "
            f"sharding {self.sharding}, gradient checkpointing {checkpointing}"
        )
        share = 100 * self.trainable_params / max(self.total_params, 1)
        params = f"parameters: {self.trainable_params:,} trainable of {self.total_params:,} ({share:.3f}%)"
        width = max(len(name) for name, _ in rows)
        lines = [head, params, *(f"  {name:<{width}}  {gib(value):>12}" for name, value in rows)]
        return "\n".join(lines)


def estimate_memory(
    model: str | None,
    method_name: str,
    *,
    batch_size: int = 4,
    max_length: int = 512,
    precision: str = "bf16",
    objective: str = "auto",
    num_processes: int = 1,
    sharding: str = "none",
    gradient_checkpointing: bool = False,
    options: dict[str, Any] | None = None,
) -> MemoryEstimate:
    """Per-device training memory of ``method_name`` on ``model`` (see the module docstring)."""
    for name, value in (
        ("batch_size", batch_size),
        ("max_length", max_length),
        ("num_processes", num_processes),
    ):
        if value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if sharding not in SHARDINGS:
        raise ConfigError(f"--sharding must be one of {', '.join(SHARDINGS)}, got '{sharding}'")
    try:
        method = get_method(method_name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    options = {**(method_defaults(method_name).get("method_options") or {}), **(options or {})}
    config = load_model_config(model)
    trained, base_linears = model_on_meta(config, method, precision, options)
    with option_errors(method.name, options):
        counts = count_parameters(trained, method.quantized_weight_bytes(options), base_linears)
        state_bytes = method.optimizer_state_bytes(options)
    objective = resolve_objective(objective, counts.total_params)
    tokens = batch_size * max_length
    scored = batch_size * max(1, int(max_length * SCORED_FRACTION[OBJECTIVE_TO_SCORING[objective]]))

    split = SHARDED_PARTS[sharding]

    def per_device(part: str, value: float) -> int:
        return int(value / num_processes) if part in split else int(value)

    ddp_buckets = 2 if num_processes > 1 and sharding == "none" else 1
    figures = {
        "weights": per_device("weights", counts.frozen_bytes),
        "trainable": per_device("trainable", counts.trainable_bytes),
        "gradients": per_device("gradients", counts.trainable_bytes * ddp_buckets),
        "optimizer": per_device("optimizer", counts.trainable_params * state_bytes),
        "activations": activation_bytes(
            config,
            tokens,
            precision,
            gradient_checkpointing=gradient_checkpointing,
            scored_tokens=scored,
            added_linear_inputs=counts.added_linear_inputs,
            quantized_linear_inputs=counts.quantized_linear_inputs,
            # a dropout before the added layers keeps its fp32 output; a dropout option of 0 leaves only
            # autocast's cast copy, none in fp32 (the input is a tensor the layer keeps anyway); methods
            # without the option: their fp32 input, as measured
            added_input_bytes=4 if options.get("dropout", True) else cast_copy_bytes(precision),
        )
        # bf16 autocast keeps a bf16 copy of every fp32 matmul weight from the forward to the backward
        # (a tied LM head, every weight of full fine-tuning); sharded with the weights they copy.
        + per_device("weights", 2 * counts.fp32_matmul_weights if precision == "bf16" else 0),
    }
    subtotal = sum(figures.values())
    overhead = max(OVERHEAD_MIN_BYTES, int(OVERHEAD_FRACTION * subtotal))
    return MemoryEstimate(
        model=model or DEFAULT_MODEL,
        method=method_name,
        precision=precision,
        objective=objective,
        batch_size=batch_size,
        max_length=max_length,
        num_processes=num_processes,
        sharding=sharding,
        gradient_checkpointing=gradient_checkpointing,
        total_params=counts.total_params,
        trainable_params=counts.trainable_params,
        **{f"{part}_bytes": value for part, value in figures.items()},
        overhead_bytes=overhead,
        total_bytes=subtotal + overhead,
    )
