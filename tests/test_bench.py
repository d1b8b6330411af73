"""Correctness of what bench/run.py compares (never its timings): on the tiny random Llama, packed cloze
scores equal the naive K copies, letter-logit predictions equal generate-and-parse wherever the first
generated token is a letter, the naive recipe sees the same tokens as mcqtune, and the mcqtune step and
FLOP counts are what the report says they are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mcqtune.config import build_config
from mcqtune.data import bundled_path, load_examples
from mcqtune.evaluation.evaluate import score_examples
from mcqtune.methods.base import cast_frozen_matmul_weights
from mcqtune.models import resolve_model
from mcqtune.prompt import PromptEncoder
from mcqtune.scoring import shared_prefix_length

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import helpers, naive  # noqa: E402
from bench.run import format_table, summarize  # noqa: E402


@pytest.fixture(scope="module")
def arc_rows():
    return load_examples(bundled_path("arc_easy", "validation"), limit=12).examples


@pytest.fixture(scope="module")
def med_rows():
    return load_examples(bundled_path("medmcqa", "validation"), limit=12).examples


@pytest.mark.parametrize("dataset", ["arc_easy", "medmcqa"])
def test_packed_cloze_loglikelihoods_equal_k_copies(dataset, tiny_model, tokenizer):
    rows = load_examples(bundled_path(dataset, "validation"), limit=12).examples
    features = PromptEncoder(tokenizer).encode_cloze(rows).features
    pad = tokenizer.pad_token_id
    packed = helpers.cloze_logliks(tiny_model, features, pad, packed=True, batch_size=5)
    copies = helpers.cloze_logliks(tiny_model, features, pad, packed=False, batch_size=5)
    assert packed.shape == (len(features), max(len(f.option_ids) for f in features))
    assert np.isfinite(packed).sum() == sum(len(f.option_ids) for f in features)
    assert helpers.max_abs_difference(packed, copies) <= 1e-4  # the bench's target is 1e-3
    lengths = helpers.option_lengths(features, packed.shape[1])
    np.testing.assert_array_equal((packed / lengths).argmax(1), (copies / lengths).argmax(1))


def test_max_abs_difference_flags_a_missing_option():
    a = np.array([[0.0, -1.0, -np.inf]])
    assert helpers.max_abs_difference(a, a + 0.5 * np.isfinite(a)) == 0.5
    assert helpers.max_abs_difference(a, np.array([[0.0, -1.0, -2.0]])) == np.inf


def _letter_loving(model, encoder):
    """Scale the (tied) embedding rows of the answer letters so the LM head often picks a letter first."""
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        for token in encoder.letter_token_ids[:4]:
            weight[token] *= 300.0
    return model


def test_letter_scoring_equals_generate_and_parse_when_a_letter_comes_first(tiny_model, tokenizer, med_rows):
    encoder = PromptEncoder(tokenizer)
    model = _letter_loving(tiny_model, encoder)
    generated = naive.generate_and_parse(model, tokenizer, encoder, med_rows, max_new_tokens=3)
    scored = score_examples(model, encoder, med_rows, "letter", batch_size=5, precision="fp32")
    letter_first = generated.first_is_letter
    assert letter_first.sum() >= 3, "the fixture should make letters likely first tokens"
    np.testing.assert_array_equal(scored.predictions[letter_first], generated.predictions[letter_first])
    # the parsed letter is the first generated token itself on those rows
    letter_ids = np.array(encoder.letter_token_ids[:4])
    first_index = [int(np.flatnonzero(letter_ids == t)[0]) for t in generated.first_tokens[letter_first]]
    np.testing.assert_array_equal(first_index, generated.predictions[letter_first])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", 1),
        (" C. Aspirin", 2),
        ("(D) none", 3),
        ("I think A", 0),
        ("BDD", 1),
        ("The answer: E", -1),
        ("", -1),
    ],
)
def test_parse_first_letter(text, expected):
    assert naive.parse_first_letter(text, 4) == expected


def test_naive_recipe_sees_the_same_tokens_padded_to_max_length(tokenizer, med_rows):
    """Real tokens of the naive padded batches equal mcqtune's letter features (prompt + answer letter)."""
    texts = naive.naive_texts(med_rows)
    dataset = naive.naive_dataset(tokenizer, texts, max_length=256)
    collator = naive.CountingCollator(tokenizer)
    batch = collator([dataset[i] for i in range(len(dataset))])
    assert batch["input_ids"].shape == (len(med_rows), 256)
    ours = PromptEncoder(tokenizer).encode_letter(med_rows, with_answer=True).features
    assert collator.real_tokens == [sum(len(f.input_ids) for f in ours)]
    for row, feature in zip(range(len(med_rows)), ours, strict=True):
        real = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        assert real == feature.input_ids
        labels = batch["labels"][row]
        # labels = the whole sequence (the naive recipe), padding masked
        assert (labels[batch["attention_mask"][row] == 0] == -100).all()
        assert (labels != -100).sum() >= len(feature.input_ids) - 1


def test_mcqtune_stepper_counts_real_tokens(tiny_model_dir, tokenizer, arc_rows):
    config = build_config(
        {
            "method": "lora",
            "objective": "letter",
            "model": str(tiny_model_dir),
            "validation": None,
            "max_steps": 2,
            "batch_size": 3,
            "precision": "bf16",
            "method_options": {"r": 4},
        }
    )
    encoder = PromptEncoder(tokenizer)
    stepper = helpers.McqtuneStepper(config, resolve_model(str(tiny_model_dir)), encoder, arc_rows[:6])
    batches = [stepper.features[:3], stepper.features[3:]]
    for batch in batches:
        stepper.step(batch)
    assert stepper.timings.questions == [3, 3]
    # the non-pad positions computed: the prompt start a batch's rows share runs, and counts, once
    rows = sum(len(f.input_ids) for f in stepper.features)
    shared = sum((len(batch) - 1) * shared_prefix_length(batch) for batch in batches)
    assert shared > 0 and sum(stepper.timings.tokens) == rows - shared
    assert all(np.isfinite(stepper.losses))
    # bf16: the frozen base's linear weights are stored in bf16, the trained LoRA weights stay fp32
    dtypes = {p.dtype for n, p in stepper.model.named_parameters() if "lora_" in n}
    assert dtypes == {torch.float32}
    frozen = {p.dtype for n, p in stepper.model.named_parameters() if n.endswith("q_proj.base_layer.weight")}
    assert frozen == {torch.bfloat16}


def test_bf16_frozen_weights_score_bit_identically_under_autocast(tiny_model, tokenizer, arc_rows):
    encoder = PromptEncoder(tokenizer)
    before = score_examples(tiny_model, encoder, arc_rows, "cloze", precision="bf16").scores
    saved = cast_frozen_matmul_weights(tiny_model, torch.bfloat16, frozen_only=False)
    assert saved > 0
    assert tiny_model.get_input_embeddings().weight.dtype == torch.float32  # tied head stays fp32
    after = score_examples(tiny_model, encoder, arc_rows, "cloze", precision="bf16").scores
    np.testing.assert_array_equal(before, after)


def test_cpu_training_attention_uses_the_math_kernel_and_eval_is_unchanged(tiny_model, tokenizer, arc_rows):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from mcqtune.scoring import collate_letter, use_math_sdpa_for_cpu_training

    features = PromptEncoder(tokenizer).encode_letter(arc_rows, with_answer=True).features
    batch = collate_letter(features, tokenizer.pad_token_id, full_logits=True)

    def logits(training: bool) -> torch.Tensor:
        tiny_model.train(training)
        return tiny_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.detach()

    wrapped_train, wrapped_eval = logits(True), logits(False)
    try:
        use_math_sdpa_for_cpu_training(False)
        with sdpa_kernel(SDPBackend.MATH):
            math_train = logits(True)
        default_eval = logits(False)
    finally:
        use_math_sdpa_for_cpu_training(True)
    assert torch.equal(wrapped_train, math_train)
    assert torch.equal(wrapped_eval, default_eval)


def test_flop_counts(tiny_model):
    n = helpers.non_embedding_params(tiny_model)
    embedding = tiny_model.get_input_embeddings().weight.numel()
    assert n == sum(p.numel() for p in tiny_model.parameters()) - embedding
    assert helpers.train_flops_per_token(n, trains_base=False) == 4 * n
    assert helpers.train_flops_per_token(n, trains_base=True) == 6 * n


def test_timings_exclude_warmup():
    t = helpers.Timings()
    t.add(10.0, 100, 4)
    t.add(1.0, 100, 4)
    t.add(1.0, 100, 4)
    assert t.tokens_per_second() == pytest.approx(300 / 12)
    assert t.tokens_per_second(warmup=1) == pytest.approx(100)
    assert t.questions_per_second(warmup=5) == pytest.approx(4)  # never drops every entry


def test_summary_table_from_a_partial_result():
    results = {
        "sections": {
            "peak": {"gflops": {"fp32": 100.0, "bf16": 250.0}},
            "eval": {
                "rows": 4,
                "ratio_questions_per_second": 25.0,
                "letter_scoring": {"questions_per_second": 50.0},
                "generate_and_parse": {"questions_per_second": 2.0},
                "first_token_is_letter": {
                    "rows": 2,
                    "agreement_fp32": 2,
                    "accuracy_letter_fp32": 0.5,
                    "accuracy_generate": 0.5,
                },
            },
        }
    }
    rows = summarize(results)
    text = format_table(rows)
    assert "4 eval q/s" in text and "25.0x" in text and "met" in text
    assert all(len(r) == 6 for r in rows)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_mfu_is_against_the_peak_of_the_precision_it_trained_in(precision):
    from bench import helpers

    accuracy = {
        "mcqtune": {"accuracy": 0.3, "n": 8},
        "naive": {"accuracy": 0.3},
        "zero_shot": {"accuracy": 0.2},
    }
    train = {
        "ratio_tokens_per_second": 2.0,
        "mcqtune": {"tokens_per_second": 100.0},
        "naive": {"tokens_per_second": 50.0},
        "accuracy": accuracy,
        "accuracy_difference_points": 0.0,
        "examples": 8,
        "non_embedding_params": 10**8,
        "precision": precision,
    }
    peak = {"fp32": 100.0, "bf16": 250.0}
    rows = {r[0]: r for r in summarize({"sections": {"peak": {"gflops": peak}, "train": train}})}
    flops = helpers.train_flops_per_token(10**8, trains_base=False)
    expected = 100.0 * flops / (peak[precision] * 1e9)
    assert rows["2 MFU (4N/token) vs matmul peak"][1] == f"{expected * 100:.1f}% of {precision}"
    assert train["mfu"][f"mcqtune_vs_{precision}_peak"] == round(expected, 4)


def test_summary_rows_for_the_memory_curve_and_lm_eval():
    scored = {"identical_predictions": 100, "agreement": 1.0, "questions_per_second": 9.0}
    results = {
        "sections": {
            "memory_curve": {
                "runs": {
                    "lora/letter/b8": {
                        "late_step": 200,
                        "early_step": 20,
                        "retained_late_over_early": 1.02,
                        "last_over_early": 1.01,
                        "peak_rss_mib": 3000,
                    },
                    "full/letter/b4": {
                        "late_step": 200,
                        "early_step": 20,
                        "retained_late_over_early": 1.25,
                        "last_over_early": 1.0,
                        "peak_rss_mib": 4000,
                    },
                }
            },
            "lm_eval": {
                "rows": 100,
                "letter": {
                    "lm_eval_questions_per_second": 2.0,
                    "fp32": scored,
                    "bf16": scored | {"speedup_vs_lm_eval": 4.5},
                },
            },
        }
    }
    rows = {r[0]: r for r in summarize(results)}
    assert rows["5 RSS kept after releases, steps 20-200, max / first, lora/letter/b8"][5] == "met"
    assert rows["5 RSS kept after releases, steps 20-200, max / first, full/letter/b4"][5] == "NOT MET"
    assert rows["7 eval q/s vs lm-eval, letter (n=100)"][3] == "4.50x"
    assert rows["7 same answers as lm-eval, letter (fp32 | bf16)"][5] == "met"
    # an AVX2 host scores fp32 only (bf16 would be emulated): its rows say so
    del results["sections"]["lm_eval"]["letter"]["bf16"]
    results["sections"]["lm_eval"]["letter"]["fp32"] = scored | {"speedup_vs_lm_eval": 1.5}
    rows = {r[0]: r for r in summarize(results)}
    assert rows["7 eval q/s vs lm-eval, letter (n=100)"][3] == "1.50x"
    assert rows["7 same answers as lm-eval, letter (fp32 | fp32)"][5] == "met"


def _trl_result(**overrides):
    """A trl section result as bench/sections/trl.py writes it (numbers made up, shapes real)."""
    accuracy = {"accuracy": 0.35, "ci95": [0.31, 0.39], "n": 500}
    return {
        "steps": 300,
        "batch_size": 8,
        "precision": "fp32",
        "trl": {"wall_seconds": 700.0, "peak_rss_mib": 2900.0},
        "mcqtune": {"wall_seconds": 100.0, "peak_rss_mib": 3000.0},
        "mcqtune_checkpointed": {"wall_seconds": 140.0, "peak_rss_mib": 1400.0},
        "trl_defaults": {
            "precision": "bf16",
            "measured_steps": 2,
            "seconds_per_step": 160.0,
            "extrapolated_wall_seconds": 48_000.0,
            "wall_ratio": 480.0,
        },
        "throughput": {
            "trl": {"real_token_share": 0.5, "mfu": 0.02, "real_tokens_per_second": 67.0},
            "mcqtune": {"real_token_share": 0.8, "mfu": 0.05, "real_tokens_per_second": 104.0},
        },
        "wall_ratio": 7.0,
        "peak_rss_ratio": 1.03,
        "checkpointed_wall_ratio": 5.0,
        "checkpointed_peak_rss_ratio": 0.48,
        "accuracy": {"mcqtune": accuracy, "trl": accuracy},
        "accuracy_difference_points": 0.0,
    } | overrides


def test_summary_rows_for_the_trl_baseline_with_and_without_gradient_checkpointing():
    rows = {r[0]: r for r in summarize({"sections": {"trl": _trl_result()}})}
    work = "0 300 LoRA steps b8, fp32 both"
    assert rows[f"{work}, whole process wall s"][1:] == (
        "100",
        "700 (TRL SFTTrainer, fp32)",
        "7.00x",
        ">= 3x",
        "met",
    )
    assert rows[f"{work}, peak RSS MiB"][5] == "NOT MET"
    assert rows[f"{work}, --gradient-checkpointing, peak RSS MiB"][1:4] == (
        "1400",
        "2900 (TRL SFTTrainer, fp32)",
        "0.48x",
    )
    assert rows[f"{work}, --gradient-checkpointing, peak RSS MiB"][5] == "met"
    assert rows[f"{work}, --gradient-checkpointing, wall s"][3:] == ("5.00x", ">= 3x", "met")
    # the headline's target is the equal-precision ratio's
    slow = {r[0]: r for r in summarize({"sections": {"trl": _trl_result(wall_ratio=1.58)}})}
    assert slow[f"{work}, whole process wall s"][3:] == ("1.58x", ">= 3x", "NOT MET")


def test_summary_rows_for_trl_at_its_defaults_share_and_mfu():
    rows = {r[0]: r for r in summarize({"sections": {"trl": _trl_result()}})}
    extrapolated = rows["0 300 LoRA steps b8, TRL at its defaults (bf16), wall s"]
    assert extrapolated[1:4] == (
        "100 (fp32)",
        "48000 EXTRAPOLATED from 2 step(s) at 160.0 s/step",
        "480.00x",
    )
    assert rows["0 real-token share (real / computed tokens)"][1:3] == ("80%", "50% (TRL)")
    assert rows["0 MFU (4N/real token) vs fp32 matmul peak"][1:4] == (
        "5.0% (104 tok/s)",
        "2.0% (TRL, 67 tok/s)",
        "2.50x",
    )
    reused = _trl_result(
        precision="bf16",
        trl_defaults={
            "precision": "bf16",
            "reused": "the run above",
            "wall_seconds": 700.0,
            "wall_ratio": 7.0,
        },
    )
    rows = {r[0]: r for r in summarize({"sections": {"trl": reused}})}
    assert rows["0 300 LoRA steps b8, TRL at its defaults (bf16), wall s"][1:4] == (
        "100 (bf16)",
        "700 (the run above: TRL's default here is bf16)",
        "7.00x",
    )
    assert "0 MFU (4N/real token) vs bf16 matmul peak" in rows


def test_trl_defaults_row_reuses_the_equal_run_only_when_the_precisions_match():
    from bench.sections.trl import default_row_plan, extrapolated

    assert default_row_plan("bf16", "bf16") == "reuse"  # an AVX-512-bf16 host or a bf16 GPU
    assert default_row_plan("bf16", "fp32") == "extrapolate"  # an AVX2 host: TRL's bf16 is emulated there
    run = {"steps": 2, "wall_seconds": 350.0, "step_seconds": [150.0, 170.0]}
    assert extrapolated(run, 60) == {
        "measured_steps": 2,
        "seconds_per_step": 160.0,
        "extrapolated_wall_seconds": 350.0 + 58 * 160.0,  # the measured process + the steps not run
    }


def test_trl_defaults_row_runs_few_steps_only_where_it_cannot_reuse(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from bench.context import FULL
    from bench.sections import trl as section

    calls = []

    def fake_run_trl(name, tmp, steps, batch, precision):
        calls.append((name, steps, batch, precision))
        return {"steps": steps, "wall_seconds": 330.0, "step_seconds": [150.0, 170.0], "precision": "bf16"}

    monkeypatch.setattr(section, "run_trl", fake_run_trl)
    ctx = SimpleNamespace(settings=FULL)
    equal = {"wall_seconds": 586.0}
    ours = {"wall_seconds": 371.0}
    reused = section._defaults_row("reuse", "bf16", equal, ours, tmp_path, ctx)
    assert calls == [] and reused["wall_seconds"] == 586.0 and reused["wall_ratio"] == 1.58
    row = section._defaults_row("extrapolate", "bf16", equal, ours, tmp_path, ctx)
    assert calls == [("trl_defaults", FULL.trl_default_steps, FULL.trl_batch_size, "defaults")]
    assert row["extrapolated_wall_seconds"] == 330.0 + (FULL.trl_steps - 2) * 160.0
    assert row["wall_ratio"] == round(row["extrapolated_wall_seconds"] / 371.0, 2)
    with pytest.raises(RuntimeError, match="trained in bf16, not the fp32"):
        section._defaults_row("extrapolate", "fp32", equal, ours, tmp_path, ctx)


def test_real_token_share_and_mfu_arithmetic():
    from bench.sections.trl import throughput

    # 4N per real token, N = 100M: 400 MFLOP a token; 50 real tokens/s = 20 GFLOP/s of a 100 GFLOP/s peak
    t = throughput(
        real_tokens=500, computed_tokens=800, train_seconds=10.0, flops_per_token=4 * 10**8, peak_gflops=100.0
    )
    assert t == {
        "real_tokens": 500,
        "computed_tokens": 800,
        "real_token_share": 0.625,
        "real_tokens_per_second": 50.0,
        "mfu": 0.2,
    }
    assert throughput(500, 800, 10.0, 4 * 10**8, None)["mfu"] is None  # no peak (a GPU run): no MFU
    assert helpers.real_token_share(5, None) is None
    with pytest.raises(ValueError, match="real tokens 9 > computed tokens 8"):
        helpers.real_token_share(9, 8)


def test_non_embedding_params_reads_a_config_as_well_as_a_model(tiny_model):
    assert helpers.non_embedding_params(tiny_model.config) == helpers.non_embedding_params(tiny_model)


def test_trl_recipe_counts_real_and_padded_tokens_and_maps_its_precision():
    from types import SimpleNamespace

    from bench import trl_recipe

    batches = iter(
        [
            {
                "input_ids": torch.ones(2, 5),
                "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]),
            },
            {"input_ids": torch.ones(2, 3), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 1]])},
            {"input_ids": torch.ones(1, 7)},  # padding-free: no mask, every position real
        ]
    )
    counter = trl_recipe.TokenCounter(lambda features: next(batches))
    for _ in range(3):
        counter([])
    assert counter.totals(2) == (7 + 6, 10 + 6)  # only the batches trained on
    assert counter.totals(3) == (7 + 6 + 7, 10 + 6 + 7)
    assert trl_recipe.sft_precision_kwargs("bf16") == {"bf16": True, "fp16": False}
    assert trl_recipe.sft_precision_kwargs("fp32") == {"bf16": False, "fp16": False}
    assert trl_recipe.sft_precision_kwargs("defaults") == {}  # TRL decides
    with pytest.raises(ValueError, match="one of bf16, fp32, defaults"):
        trl_recipe.sft_precision_kwargs("auto")
    assert trl_recipe.resolved_precision(SimpleNamespace(bf16=True, fp16=False)) == "bf16"
    assert trl_recipe.resolved_precision(SimpleNamespace(bf16=False, fp16=False)) == "fp32"


def test_retained_growth_sees_what_later_releases_keep():
    from bench.helpers import retained_growth

    flat = {20: 1000.0, 40: 1001.0, 60: 999.0, 80: 1000.5}
    leaking = {20: 1000.0, 40: 1060.0, 60: 1120.0, 80: 1180.0}
    assert retained_growth(flat)["retained_late_over_early"] <= 1.01
    grown = retained_growth(leaking)
    assert grown["retained_late_over_early"] > 1.1 and (grown["early_step"], grown["late_step"]) == (20, 80)
    assert retained_growth({20: 1000.0}) == {}  # one release: nothing to compare


def test_the_trl_process_runs_under_glibcs_defaults_not_mcqtunes(tmp_path):
    """The recipe a notebook runs never imports mcqtune (whose import sets glibc's heap threshold): its
    module imports none, and what it needs from mcqtune arrives as JSON made in another process."""
    import json
    import subprocess

    from bench import trl_recipe

    probe = (
        "import sys, bench.trl_recipe; print(sorted(m for m in sys.modules if m.split('.')[0] == 'mcqtune'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
    inputs = tmp_path / "inputs.json"
    trl_recipe.write_recipe_inputs(inputs, "medmcqa", steps=2, batch_size=3)
    written = json.loads(inputs.read_text())
    assert len(written["texts"]) == 6 and written["texts"][0].startswith("Choose the correct option")
    assert written["lora"]["r"] == build_config({"method": "lora"}).method_options["r"]
    assert written["training"]["learning_rate"] == build_config({"method": "lora"}).lr
