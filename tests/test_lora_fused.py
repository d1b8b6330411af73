"""LoRA's fused forward (methods/lora.FusedLoraLinear): peft's numbers without its wide passes, and
peft's own forward wherever the fusion does not apply."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import Linear as PeftLoraLinear
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import make_tiny_causal_lm, make_tiny_llama
from mcqtune.config import build_config
from mcqtune.methods import get_method
from mcqtune.methods.lora import FusedLoraLinear, fuse_lora_layers
from mcqtune.prompt import PromptEncoder
from mcqtune.scoring import collate_letter, letter_forward
from test_scoring import EXAMPLES

LORA = get_method("lora")


def lora_options(**overrides) -> dict:
    return build_config({"method": "lora"}).method_options | {"r": 4} | overrides


def lora_model(tokenizer, architecture: str = "Llama", **overrides) -> torch.nn.Module:
    """A tiny model under mcqtune's LoRA with B drawn at random (peft starts it at zero, which would
    make every update vanish and hide a wrong scaling)."""
    base = (
        make_tiny_llama(tokenizer)
        if architecture == "Llama"
        else make_tiny_causal_lm(architecture, tokenizer)
    )
    model = LORA.apply(base, lora_options(**overrides))
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    return model.train()


def set_forward(model: torch.nn.Module, fused: bool) -> None:
    for module in model.modules():
        if isinstance(module, PeftLoraLinear):
            module.__class__ = FusedLoraLinear if fused else PeftLoraLinear


def loss_scores_grads(model, batch):
    model.zero_grad()
    loss, scores = letter_forward(model, batch, with_loss=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss, scores, grads


def both_ways(model, batch):
    results = {}
    for fused in (False, True):
        set_forward(model, fused)
        results[fused] = loss_scores_grads(model, batch)
    return results[False], results[True]


def letter_batch(tokenizer, share_prefix: bool = True):
    features = PromptEncoder(tokenizer).encode_letter(EXAMPLES, with_answer=True).features
    return collate_letter(features, tokenizer.pad_token_id, share_prefix=share_prefix)


def test_the_lora_method_gives_fused_layers_and_attach_does_too(tokenizer, tmp_path):
    model = lora_model(tokenizer)
    layers = [m for m in model.modules() if isinstance(m, PeftLoraLinear)]
    assert layers and all(type(m) is FusedLoraLinear for m in layers)
    LORA.save(model, tmp_path)
    attached = LORA.attach(make_tiny_llama(tokenizer), tmp_path, lora_options(), "a")
    assert all(type(m) is FusedLoraLinear for m in attached.modules() if isinstance(m, PeftLoraLinear))


@pytest.mark.parametrize("architecture", ["Llama", "Qwen2", "Gemma", "Mistral"])  # Qwen2: q/k/v with bias
def test_fused_forward_gives_peft_loss_scores_and_gradients(architecture, tokenizer):
    model = lora_model(tokenizer, architecture)
    (loss, scores, grads), (f_loss, f_scores, f_grads) = both_ways(model, letter_batch(tokenizer))
    assert loss.item() > 0 and any("lora_A" in n for n in grads)
    torch.testing.assert_close(f_loss, loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(f_scores, scores, atol=1e-5, rtol=0)
    assert f_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(f_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_under_bf16_autocast_peft_forward_runs_bit_for_bit(tokenizer):
    """bf16 training and a model reloaded for bf16 inference must round alike: peft's forward there."""
    model = lora_model(tokenizer)
    batch = letter_batch(tokenizer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused_adapter_used(model, batch)
        (loss, scores, grads), (f_loss, f_scores, f_grads) = both_ways(model, batch)
    torch.testing.assert_close(f_loss, loss, atol=0, rtol=0)
    torch.testing.assert_close(f_scores, scores, atol=0, rtol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(f_grads[name], grad, atol=0, rtol=0, msg=name)


class WideElementwise(TorchDispatchMode):
    """Counts elementwise multiplications and additions whose result is as wide as a layer output."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.ops = numel, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if (
            name in ("mul", "add", "mul_", "add_")
            and isinstance(out, torch.Tensor)
            and out.numel() == self.numel
        ):
            self.ops[name] += 1
        return out


@pytest.mark.parametrize("fused", [False, True])
def test_fused_layer_makes_no_wide_elementwise_pass(fused):
    torch.manual_seed(0)
    model = get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(48, 40, bias=False)), LoraConfig(r=4, target_modules=["0"])
    )
    model.base_model.model[0].lora_B["default"].weight.data.normal_()
    if fused:
        fuse_lora_layers(model)
    x = torch.randn(3, 5, 48, requires_grad=True)
    with WideElementwise(3 * 5 * 40) as counter:
        model(x).sum().backward()  # a loss with no elementwise step of its own
    assert (sum(counter.ops.values()) == 0) == fused, counter.ops  # peft: the scaling and the sum, both ways


def fused_adapter_used(model, batch) -> bool:
    layer = next(m for m in model.modules() if isinstance(m, FusedLoraLinear))
    x = torch.randn(2, 3, layer.in_features)
    return layer._fused_adapter(x) is not None


@pytest.mark.parametrize(
    ("case", "overrides"),
    [
        ("dropout while training", {"dropout": 0.1}),
        ("DoRA", {"use_dora": True}),
        ("merged", {}),
        ("adapters off", {}),
        ("two active adapters", {}),
        ("weights partitioned by DeepSpeed ZeRO-3", {}),
    ],
)
def test_what_the_fusion_does_not_cover_runs_peft_forward(case, overrides, tokenizer):
    model = lora_model(tokenizer, **overrides)
    batch = letter_batch(tokenizer, share_prefix=False)
    assert fused_adapter_used(lora_model(tokenizer), batch)  # the plain case does fuse
    if case == "merged":
        model.merge_adapter()
    elif case == "adapters off":
        model.disable_adapter_layers()
    elif case == "two active adapters":
        model.add_adapter("second", model.peft_config["default"])
        model.base_model.set_adapter(["default", "second"])
    elif case == "weights partitioned by DeepSpeed ZeRO-3":  # gathered only in their own module's forward
        for module in model.modules():
            if isinstance(module, PeftLoraLinear):
                module.base_layer.weight.ds_id = 0  # what ZeRO-3 sets on the parameters it partitions
    assert not fused_adapter_used(model, batch)
    if case != "dropout while training":  # random masks: the two runs could not agree
        results = []
        for fused in (False, True):
            set_forward(model, fused)
            with torch.no_grad():
                results.append(letter_forward(model, batch, with_loss=True))
        (loss, scores), (f_loss, f_scores) = results
        torch.testing.assert_close(f_loss, loss, atol=0, rtol=0)  # bit for bit: the same code ran
        torch.testing.assert_close(f_scores, scores, atol=0, rtol=0)
    if case == "dropout while training":
        model.eval()  # dropout off: fused again
        assert fused_adapter_used(model, batch)


def test_mixed_adapters_per_row_run_peft_forward(tokenizer):
    model = lora_model(tokenizer).eval()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    calls = Counter()
    original = FusedLoraLinear._fused_adapter

    def counting(self, x):
        calls["asked"] += 1
        return original(self, x)

    FusedLoraLinear._fused_adapter = counting
    try:
        with torch.no_grad():
            mixed = model(input_ids=ids, adapter_names=["default", "__base__"]).logits
            asked_by_mixed = calls["asked"]
            plain = model(input_ids=ids).logits
    finally:
        FusedLoraLinear._fused_adapter = original
    assert asked_by_mixed == 0 and calls["asked"] > 0  # adapter_names goes straight to peft's forward
    with torch.no_grad(), model.disable_adapter():
        base_row = model(input_ids=ids[1:]).logits
    torch.testing.assert_close(mixed[0], plain[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(mixed[1], base_row[0], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_fused_forward_gives_peft_numbers_on_the_bundled_model(bundled_resolved, tokenizer):
    from mcqtune.models import load_model

    model = LORA.apply(load_model(bundled_resolved, torch.float32), lora_options(r=16)).train()
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.01)
    (loss, scores, grads), (f_loss, f_scores, f_grads) = both_ways(model, letter_batch(tokenizer))
    torch.testing.assert_close(f_loss, loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f_scores, scores, atol=1e-4, rtol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(f_grads[name], grad, atol=1e-5, rtol=1e-3, msg=name)
