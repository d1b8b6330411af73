"""Per-question parity and throughput of mcqtune's scoring against lm-evaluation-harness, letter and cloze.

Run from the repository root with the project venv (``bench/run.py --only lm_eval`` runs it too)::

    .venv/bin/python bench/lm_eval_parity.py            # 100 rows, installs lm-eval on first run
    .venv/bin/python bench/lm_eval_parity.py --n 20 --skip-install

What it does, all offline once the bench venv exists:

1. creates ``.bench-venv`` (gitignored) and installs ``lm-eval[hf]`` from the package index there, with
   the same torch and transformers versions as the project (so both sides run the same kernels);
2. writes the first ``--n`` bundled MedMCQA validation rows (as mcqtune normalises them) to a JSONL file
   and two local lm-eval tasks for it (``dataset_path: json`` + ``data_files``, ``output_type:
   multiple_choice``): *letter*, mcqtune's letter prompt as a Jinja ``doc_to_text``, ``doc_to_choice:
   [A, B, C, D]``, ``target_delimiter: ""`` (our letter follows ``### Answer:\\n`` directly); *cloze*,
   mcqtune's cloze context, the option texts as choices, mcqtune's option prefix as the delimiter;
3. runs lm-eval's ``hf`` model on the bundled model's cached HF directory (fp32, CPU, BOS added as
   mcqtune's tokenizer does) through ``bench/lm_eval_driver.py``: one model load, then each task timed
   with the model in memory;
4. scores the same rows with mcqtune (``score_examples``, fp32 and the bf16 autocast that ``--precision
   auto`` picks on this CPU, the same batch size), timed the same way, and compares per-question
   predictions and questions/s. lm-eval sums an option's token log-probs; mcqtune's cloze score is
   their mean, so lm-eval's sums are divided by the option's token count before the argmax.

Why the numbers can differ at all: lm-eval moves trailing whitespace of the context into the
continuation, so it scores ``"\\n" + letter`` after ``"### Answer:"`` where mcqtune scores the letter
after ``"### Answer:\\n"``. Tokenization is identical (checked below: ``"\\n"`` is its own token), so
the two log-likelihoods differ by log p("\\n" | prompt), the same for all four options of a question:
the argmax is the same up to floating point (different batch shapes and padding).

Writes ``parity.json`` and ``parity.md`` under ``--out`` (default runs/lm_eval_parity) and prints the
agreement and every disagreement with its score margins.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
LM_EVAL_VERSION = "0.4.13"


def mcqtune_precisions() -> tuple[str, ...]:
    """fp32 (lm-eval's CPU default), and bf16 autocast where the CPU has it natively (what mcqtune's
    ``auto`` picks there); where bf16 is only emulated (AVX2 hosts) nobody would score in it."""
    import torch

    from mcqtune.models import resolve_precision

    return ("fp32",) + (("bf16",) if resolve_precision("auto", torch.device("cpu")) == "bf16" else ())


TASKS = {"letter": "mcqtune_medmcqa_parity", "cloze": "mcqtune_medmcqa_cloze_parity"}
# Same versions as requirements.txt so both sides use the same kernels.
BENCH_PACKAGES = [
    "torch==2.13.0",
    "transformers==4.57.6",
    "accelerate==1.15.0",
    "peft==0.21.2",
    "datasets==5.0.1",
    "numpy==2.4.6",
    f"lm-eval[hf]=={LM_EVAL_VERSION}",
]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def ensure_bench_venv(venv: Path, skip_install: bool) -> Path:
    python = venv / "bin" / "python"
    lm_eval = venv / "bin" / "lm_eval"
    if lm_eval.exists():
        return venv
    if skip_install:
        sys.exit(f"{lm_eval} not found; run without --skip-install to create the bench venv")
    print(f"creating {venv} and installing lm-eval {LM_EVAL_VERSION} (a few minutes, once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *BENCH_PACKAGES], check=True)
    return venv


def letter_template_as_jinja() -> str:
    """mcqtune's default letter prompt, spelled as an lm-eval Jinja template over the sample's fields."""
    from mcqtune.prompt import DEFAULT_CHOICE_FORMAT, DEFAULT_LETTER_TEMPLATE

    choices = "\n".join(DEFAULT_CHOICE_FORMAT.format(letter=L, text="{{" + L + "}}") for L in "ABCD")
    return DEFAULT_LETTER_TEMPLATE.format(question="{{question}}", choices=choices)


def write_tasks(out: Path, examples) -> Path:
    """The sample as JSONL and one lm-eval task per formulation, each spelled as mcqtune renders it."""
    from mcqtune.prompt import DEFAULT_CLOZE_TEMPLATE, PromptConfig, render_letter_prompt

    task_dir = out / "task"
    task_dir.mkdir(parents=True, exist_ok=True)
    sample = out / "sample.jsonl"
    with sample.open("w", encoding="utf-8") as f:
        for e in examples:
            row = {"id": e.id, "question": e.question, "answer": e.answer, "choices": list(e.choices)}
            row.update({L: text for L, text in zip("ABCD", e.choices, strict=True)})
            row["mcqtune_prompt"] = render_letter_prompt(e, PromptConfig())  # to check the rendering
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    common = {
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"validation": str(sample)}},
        "validation_split": "validation",
        "output_type": "multiple_choice",
        "doc_to_target": "answer",
        "num_fewshot": 0,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    tasks = {
        TASKS["letter"]: {
            "doc_to_text": letter_template_as_jinja(),
            "doc_to_choice": ["A", "B", "C", "D"],
            "target_delimiter": "",
        },
        TASKS["cloze"]: {  # continuation = delimiter + option text, as mcqtune's cloze_option_prefix + text
            "doc_to_text": DEFAULT_CLOZE_TEMPLATE.format(question="{{question}}"),
            "doc_to_choice": "choices",
            "target_delimiter": PromptConfig().cloze_option_prefix,
        },
    }
    for name, fields in tasks.items():
        task = {"task": name, **common, **fields}
        (task_dir / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False, allow_unicode=True))
    return task_dir


def run_lm_eval(
    venv: Path, model_dir: str, task_dir: Path, out: Path, batch_size: int, peft: str | None
) -> dict[str, dict]:
    """Both tasks through bench/lm_eval_driver.py (one model load): {formulation: {samples, seconds}}."""
    output = out / "lm_eval"
    model_args = {"pretrained": model_dir, "dtype": "float32", "add_bos_token": True}
    if peft:
        model_args["peft"] = peft
    spec = {
        "model_args": model_args,
        "batch_size": batch_size,
        "task_dir": str(task_dir),
        "tasks": list(TASKS.values()),
        "out": str(output),
    }
    spec_path = out / "lm_eval_spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    env = {**os.environ, **OFFLINE, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)  # the bench venv's own packages only
    command = [str(venv / "bin" / "python"), str(ROOT / "bench" / "lm_eval_driver.py"), str(spec_path)]
    print("running lm-eval:", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env, cwd=out)
    runs = {}
    for formulation, task in TASKS.items():
        with open(output / f"{task}.samples.jsonl", encoding="utf-8") as f:
            samples = sorted((json.loads(line) for line in f), key=lambda s: s["doc_id"])
        runs[formulation] = json.loads((output / f"{task}.json").read_text()) | {"samples": samples}
    return runs


def _arguments(sample: dict) -> list[tuple[str, str]]:
    """(context, continuation) per choice; lm-eval logs them as a list or as {gen_args_i: {arg_0, arg_1}}."""
    args = sample["arguments"]
    if isinstance(args, dict):
        return [
            (a["arg_0"], a["arg_1"])
            for _, a in sorted(args.items(), key=lambda kv: int(kv[0].split("_")[-1]))
        ]
    return [(a[0], a[1]) for a in args]


def tokenization_check(tokenizer, prompts: list[str]) -> dict:
    """lm-eval scores '\\n'+letter after the prompt minus its trailing newline; ours scores the letter."""
    same = 0
    for prompt in prompts:
        ours = tokenizer(prompt + "A")["input_ids"]
        stripped = prompt.rstrip()
        context = tokenizer(stripped)["input_ids"]
        whole = tokenizer(stripped + prompt[len(stripped) :] + "A")["input_ids"]
        same += int(whole == ours and whole[: len(context)] == context and len(whole) == len(context) + 2)
    return {"rows": len(prompts), "identical_token_sequences": same}


def _disagreements(examples, lm_scores, lm_pred, scores, pred, gold) -> list[dict]:
    out = []
    for q in np.flatnonzero(pred != lm_pred):
        top2 = np.sort(lm_scores[q])[-2:]
        ours_sorted = np.sort(scores[q])[-2:]
        out.append(
            {
                "id": examples[q].id,
                "lm_eval": "ABCD"[lm_pred[q]],
                "mcqtune": "ABCD"[pred[q]],
                "gold": "ABCD"[gold[q]],
                "lm_eval_margin": round(float(top2[1] - top2[0]), 6),
                "mcqtune_margin": round(float(ours_sorted[1] - ours_sorted[0]), 6),
            }
        )
    return out


def compare_formulation(examples, lm_scores: np.ndarray, ours: dict, lm_seconds: float) -> dict:
    """Per-question agreement and questions/s of each mcqtune precision against lm-eval's run.

    ``lm_scores`` are already on mcqtune's scale (letter: a per-question offset apart; cloze: per-token
    means), so the same argmax is the parity criterion and the offset-removed difference the distance."""
    gold = np.array([e.answer for e in examples])
    lm_pred = lm_scores.argmax(axis=1)
    n = len(examples)
    result = {
        "lm_eval_accuracy": round(float((lm_pred == gold).mean()), 4),
        "lm_eval_predicted_letters": {L: int((lm_pred == i).sum()) for i, L in enumerate("ABCD")},
        "lm_eval_seconds": round(lm_seconds, 2),
        "lm_eval_questions_per_second": round(n / lm_seconds, 3),
    }
    for precision, (scores, seconds) in ours.items():
        pred = scores.argmax(axis=1)
        agree = pred == lm_pred
        shifted = lm_scores - scores
        result[precision] = {
            "agreement": round(float(agree.mean()), 4),
            "identical_predictions": int(agree.sum()),
            "mcqtune_accuracy": round(float((pred == gold).mean()), 4),
            "predicted_letters": {L: int((pred == i).sum()) for i, L in enumerate("ABCD")},
            "max_abs_score_difference_after_offset": float(
                np.abs(shifted - shifted.mean(axis=1, keepdims=True)).max()
            ),
            "seconds": round(seconds, 2),
            "questions_per_second": round(n / seconds, 3),
            "speedup_vs_lm_eval": round(lm_seconds / seconds, 2),
            "disagreements": _disagreements(examples, lm_scores, lm_pred, scores, pred, gold),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="MedMCQA validation rows (default 100)")
    parser.add_argument("--venv", default=str(ROOT / ".bench-venv"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "lm_eval_parity"))
    parser.add_argument("--batch-size", type=int, default=8, help="both tools' batch size (default 8)")
    parser.add_argument("--skip-install", action="store_true", help="fail instead of creating the venv")
    parser.add_argument(
        "--adapter",
        help="a mcqtune LoRA run directory: both sides load its peft adapter (a model that does not "
        "answer A to everything makes the comparison sharper)",
    )
    args = parser.parse_args(argv)

    import torch

    from mcqtune.data import bundled_path, load_examples
    from mcqtune.evaluation.evaluate import score_examples
    from mcqtune.models import load_model, load_tokenizer, resolve_model
    from mcqtune.prompt import PromptConfig, PromptEncoder, render_letter_prompt

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    venv = ensure_bench_venv(Path(args.venv), args.skip_install)
    examples = load_examples(bundled_path("medmcqa", "validation"), limit=args.n).examples
    resolved = resolve_model(None)
    task_dir = write_tasks(out, examples)
    peft = None
    if args.adapter:
        from mcqtune.artifacts import ADAPTER_DIR, read_manifest

        manifest = read_manifest(args.adapter)
        if manifest["method"] != "lora" or manifest.get("scoring") != "letter":
            sys.exit("--adapter must be a LoRA run trained with the letter objective")
        peft = str((Path(args.adapter) / ADAPTER_DIR).resolve())
    lm_runs = run_lm_eval(venv, resolved.path, task_dir, out, args.batch_size, peft)

    tokenizer = load_tokenizer(resolved)
    encoder = PromptEncoder(tokenizer)
    if args.adapter:
        from mcqtune.inference import Predictor

        predictor = Predictor.open(None, {"run": args.adapter}, device=torch.device("cpu"), precision="fp32")
        model = predictor.module("run")
    else:
        model = load_model(resolved).to(torch.device("cpu")).eval()
    ours: dict[str, dict] = {"letter": {}, "cloze": {}}
    precisions = mcqtune_precisions()
    for scoring in ours:
        for precision in precisions:
            start = time.perf_counter()
            scored = score_examples(
                model, encoder, examples, scoring, precision=precision, batch_size=args.batch_size
            )
            seconds = time.perf_counter() - start
            if len(scored.examples) != len(examples):
                sys.exit(
                    f"mcqtune skipped {len(examples) - len(scored.examples)} rows (max_length); use fewer"
                )
            ours[scoring][precision] = (scored.scores, seconds)

    prompts = [render_letter_prompt(e, PromptConfig()) for e in examples]
    letter_samples = lm_runs["letter"]["samples"]
    lm_letter = np.array([[float(r[0]) for r in s["filtered_resps"]] for s in letter_samples])
    contexts_match = sum(
        all(context == p for context, _ in _arguments(s))
        for s, p in zip(letter_samples, prompts, strict=True)
    )
    # lm-eval sums each option's token log-probs; mcqtune's cloze score is their mean over the option's
    # tokens: divided by mcqtune's token counts, lm-eval's sums are on the same scale
    option_tokens = np.array(
        [[len(o) for o in f.option_ids] for f in encoder.encode_cloze(examples).features]
    )
    lm_cloze = np.array([[float(r[0]) for r in s["filtered_resps"]] for s in lm_runs["cloze"]["samples"]])
    result = {
        "rows": len(examples),
        "batch_size": args.batch_size,
        "lm_eval_version": LM_EVAL_VERSION,
        "model": resolved.model_id,
        "model_dir": resolved.path,
        "adapter": args.adapter,
        "lm_eval_model_load_seconds": round(lm_runs["letter"]["model_load_seconds"], 2),
        "mean_newline_logprob": round(float((lm_letter - ours["letter"]["fp32"][0]).mean()), 6),
        "prompt_identical_rows": int(contexts_match),
        "tokenization": tokenization_check(tokenizer, prompts),
        "lm_eval_reported_acc": round(float(np.mean([s["acc"] for s in letter_samples])), 4),
        "letter": compare_formulation(examples, lm_letter, ours["letter"], lm_runs["letter"]["seconds"]),
        "cloze": compare_formulation(
            examples, lm_cloze / option_tokens, ours["cloze"], lm_runs["cloze"]["seconds"]
        ),
    }
    (out / "parity.json").write_text(json.dumps(result, indent=2) + "\n")

    lines = [
        f"# mcqtune vs lm-eval {LM_EVAL_VERSION}: {len(examples)} MedMCQA validation rows, "
        f"batch {args.batch_size}" + (f", adapter {args.adapter}" if args.adapter else ", zero-shot"),
        "",
        f"- letter prompt strings identical on {contexts_match}/{len(examples)} rows; token sequences "
        f"identical on {result['tokenization']['identical_token_sequences']}/{len(examples)}",
        "- questions/s: scoring only, each tool with the model already loaded "
        "(lm-eval fp32, its CPU default)",
    ]
    for scoring in ("letter", "cloze"):
        r = result[scoring]
        lines.append(
            f"- {scoring}: lm-eval accuracy {r['lm_eval_accuracy'] * 100:.1f}%, "
            f"{r['lm_eval_questions_per_second']:.2f} q/s, predicted letters {r['lm_eval_predicted_letters']}"
        )
        for precision in precisions:
            p = r[precision]
            lines.append(
                f"  - mcqtune {precision}: identical predictions "
                f"{p['identical_predictions']}/{len(examples)} "
                f"({p['agreement'] * 100:.1f}%), accuracy {p['mcqtune_accuracy'] * 100:.1f}%, "
                f"{p['questions_per_second']:.2f} q/s = {p['speedup_vs_lm_eval']:.2f}x lm-eval, max score "
                f"difference after the per-question offset {p['max_abs_score_difference_after_offset']:.2e}"
            )
            for d in p["disagreements"]:
                lines.append(
                    f"    - {d['id']}: lm-eval {d['lm_eval']} (margin {d['lm_eval_margin']:.2e}), mcqtune "
                    f"{d['mcqtune']} (margin {d['mcqtune_margin']:.2e}), gold {d['gold']}"
                )
    text = "\n".join(lines) + "\n"
    (out / "parity.md").write_text(text)
    print(text)
    print(f"wrote {out / 'parity.json'} and {out / 'parity.md'}")
    return 0 if min(result[s]["fp32"]["agreement"] for s in ("letter", "cloze")) >= 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
