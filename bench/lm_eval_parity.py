"""Per-question parity of mcqtune's letter scoring with lm-evaluation-harness on a MedMCQA sample.

Run from the repository root with the project venv::

    .venv/bin/python bench/lm_eval_parity.py            # 100 rows, installs lm-eval on first run
    .venv/bin/python bench/lm_eval_parity.py --n 20 --skip-install

What it does, all offline once the bench venv exists:

1. creates ``.bench-venv`` (gitignored) and installs ``lm-eval[hf]`` from the package index there, with
   the same torch and transformers versions as the project (so both sides run the same kernels);
2. writes the first ``--n`` bundled MedMCQA validation rows (as mcqtune normalises them) to a JSONL file
   and a local lm-eval task for it: ``dataset_path: json`` + ``data_files``, ``output_type:
   multiple_choice``, mcqtune's letter prompt as a Jinja ``doc_to_text``, ``doc_to_choice: [A, B, C, D]``
   and ``target_delimiter: ""`` (our letter follows ``### Answer:\\n`` directly, no space);
3. runs lm-eval's ``hf`` model on the bundled model's cached HF directory (fp32, CPU, BOS added as
   mcqtune's tokenizer does) with ``--log_samples``;
4. scores the same rows with mcqtune (``score_examples``, letter scoring, fp32, and the bf16 autocast
   that ``--precision auto`` picks on this CPU) and compares per-question predictions.

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
import glob
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
TASK = "mcqtune_medmcqa_parity"
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
        return lm_eval
    if skip_install:
        sys.exit(f"{lm_eval} not found; run without --skip-install to create the bench venv")
    print(f"creating {venv} and installing lm-eval {LM_EVAL_VERSION} (a few minutes, once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *BENCH_PACKAGES], check=True)
    return lm_eval


def letter_template_as_jinja() -> str:
    """mcqtune's default letter prompt, spelled as an lm-eval Jinja template over the sample's fields."""
    from mcqtune.prompt import DEFAULT_CHOICE_FORMAT, DEFAULT_LETTER_TEMPLATE

    choices = "\n".join(DEFAULT_CHOICE_FORMAT.format(letter=L, text="{{" + L + "}}") for L in "ABCD")
    return DEFAULT_LETTER_TEMPLATE.format(question="{{question}}", choices=choices)


def write_task(out: Path, examples) -> Path:
    from mcqtune.prompt import PromptConfig, render_letter_prompt

    task_dir = out / "task"
    task_dir.mkdir(parents=True, exist_ok=True)
    sample = out / "sample.jsonl"
    with sample.open("w", encoding="utf-8") as f:
        for e in examples:
            row = {"id": e.id, "question": e.question, "answer": e.answer}
            row.update({L: text for L, text in zip("ABCD", e.choices, strict=True)})
            row["mcqtune_prompt"] = render_letter_prompt(e, PromptConfig())  # to check the rendering
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    task = {
        "task": TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"validation": str(sample)}},
        "validation_split": "validation",
        "output_type": "multiple_choice",
        "doc_to_text": letter_template_as_jinja(),
        "doc_to_choice": ["A", "B", "C", "D"],
        "doc_to_target": "answer",
        "target_delimiter": "",
        "num_fewshot": 0,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    (task_dir / f"{TASK}.yaml").write_text(yaml.safe_dump(task, sort_keys=False, allow_unicode=True))
    return task_dir


def run_lm_eval(
    lm_eval: Path, model_dir: str, task_dir: Path, out: Path, batch_size: int, peft: str | None
) -> list[dict]:
    output = out / "lm_eval"
    model_args = f"pretrained={model_dir},dtype=float32,add_bos_token=True,trust_remote_code=False"
    if peft:
        model_args += f",peft={peft}"
    command = [
        str(lm_eval),
        "--model",
        "hf",
        "--model_args",
        model_args,
        "--tasks",
        TASK,
        "--include_path",
        str(task_dir),
        "--device",
        "cpu",
        "--batch_size",
        str(batch_size),
        "--num_fewshot",
        "0",
        "--log_samples",
        "--output_path",
        str(output),
    ]
    env = {**os.environ, **OFFLINE, "TOKENIZERS_PARALLELISM": "false"}
    print("running lm-eval:", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=out)
    print(f"lm-eval took {time.perf_counter() - start:.0f}s", flush=True)
    files = sorted(glob.glob(str(output / "**" / f"samples_{TASK}_*.jsonl"), recursive=True))
    if not files:
        sys.exit(f"lm-eval wrote no samples file under {output}")
    with open(files[-1], encoding="utf-8") as f:
        samples = [json.loads(line) for line in f]
    return sorted(samples, key=lambda s: s["doc_id"])


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="MedMCQA validation rows (default 100)")
    parser.add_argument("--venv", default=str(ROOT / ".bench-venv"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "lm_eval_parity"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-install", action="store_true", help="fail instead of creating the venv")
    parser.add_argument(
        "--adapter",
        help="a mcqtune LoRA run directory: both sides load its peft adapter (a model that does not "
        "answer A to everything makes the comparison sharper)",
    )
    args = parser.parse_args()

    import torch

    from mcqtune.data import bundled_path, load_examples
    from mcqtune.evaluation.evaluate import score_examples
    from mcqtune.models import load_model, load_tokenizer, resolve_model
    from mcqtune.prompt import PromptConfig, PromptEncoder, render_letter_prompt

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    lm_eval = ensure_bench_venv(Path(args.venv), args.skip_install)
    examples = load_examples(bundled_path("medmcqa", "validation"), limit=args.n).examples
    resolved = resolve_model(None)
    task_dir = write_task(out, examples)
    peft = None
    if args.adapter:
        from mcqtune.artifacts import ADAPTER_DIR, read_manifest

        manifest = read_manifest(args.adapter)
        if manifest["method"] != "lora" or manifest.get("scoring") != "letter":
            sys.exit("--adapter must be a LoRA run trained with the letter objective")
        peft = str((Path(args.adapter) / ADAPTER_DIR).resolve())
    samples = run_lm_eval(lm_eval, resolved.path, task_dir, out, args.batch_size, peft)

    tokenizer = load_tokenizer(resolved)
    encoder = PromptEncoder(tokenizer)
    if args.adapter:
        from mcqtune.inference import Predictor

        predictor = Predictor.open(None, {"run": args.adapter}, device=torch.device("cpu"), precision="fp32")
        model = predictor.module("run")
    else:
        model = load_model(resolved).to(torch.device("cpu")).eval()
    prompts = [render_letter_prompt(e, PromptConfig()) for e in examples]
    ours = {}
    for precision in ("fp32", "bf16"):
        scored = score_examples(model, encoder, examples, "letter", precision=precision, batch_size=16)
        if len(scored.examples) != len(examples):
            sys.exit(f"mcqtune skipped {len(examples) - len(scored.examples)} rows (max_length); use fewer")
        ours[precision] = scored.scores

    lm_scores = np.array([[float(r[0]) for r in s["filtered_resps"]] for s in samples])
    lm_pred = lm_scores.argmax(axis=1)
    gold = np.array([e.answer for e in examples])
    contexts_match = sum(
        all(context == p for context, _ in _arguments(s)) for s, p in zip(samples, prompts, strict=True)
    )
    # If the contexts are the same, lm-eval's score = ours + log p("\n" | prompt) for every option.
    offset = lm_scores - ours["fp32"]
    offset_spread = float(np.abs(offset - offset.mean(axis=1, keepdims=True)).max())
    result = {
        "rows": len(examples),
        "lm_eval_version": LM_EVAL_VERSION,
        "model": resolved.model_id,
        "model_dir": resolved.path,
        "adapter": args.adapter,
        "mean_newline_logprob": round(float((lm_scores - ours["fp32"]).mean()), 6),
        "prompt_identical_rows": int(contexts_match),
        "tokenization": tokenization_check(tokenizer, prompts),
        "lm_eval_accuracy": round(float((lm_pred == gold).mean()), 4),
        "lm_eval_reported_acc": round(float(np.mean([s["acc"] for s in samples])), 4),
        "max_per_question_offset_spread_fp32": offset_spread,
    }
    for precision, scores in ours.items():
        pred = scores.argmax(axis=1)
        agree = pred == lm_pred
        diffs = []
        for q in np.flatnonzero(~agree):
            top2 = np.sort(lm_scores[q])[-2:]
            ours_sorted = np.sort(scores[q])[-2:]
            diffs.append(
                {
                    "id": examples[q].id,
                    "lm_eval": "ABCD"[lm_pred[q]],
                    "mcqtune": "ABCD"[pred[q]],
                    "gold": "ABCD"[gold[q]],
                    "lm_eval_margin": round(float(top2[1] - top2[0]), 6),
                    "mcqtune_margin": round(float(ours_sorted[1] - ours_sorted[0]), 6),
                }
            )
        result[precision] = {
            "agreement": round(float(agree.mean()), 4),
            "identical_predictions": int(agree.sum()),
            "mcqtune_accuracy": round(float((pred == gold).mean()), 4),
            "predicted_letters": {L: int((pred == i).sum()) for i, L in enumerate("ABCD")},
            "max_abs_score_difference_after_offset": float(
                np.abs((lm_scores - scores) - (lm_scores - scores).mean(axis=1, keepdims=True)).max()
            ),
            "disagreements": diffs,
        }
    result["lm_eval_predicted_letters"] = {L: int((lm_pred == i).sum()) for i, L in enumerate("ABCD")}
    (out / "parity.json").write_text(json.dumps(result, indent=2) + "\n")

    lines = [
        f"# mcqtune vs lm-eval {LM_EVAL_VERSION}: {len(examples)} MedMCQA validation rows, letter scoring"
        + (f", adapter {args.adapter}" if args.adapter else ", zero-shot"),
        "",
        f"- prompt strings identical on {contexts_match}/{len(examples)} rows; token sequences identical on "
        f"{result['tokenization']['identical_token_sequences']}/{len(examples)}",
        f"- lm-eval accuracy {result['lm_eval_accuracy'] * 100:.1f}% (its own acc "
        f"{result['lm_eval_reported_acc'] * 100:.1f}%), "
        f"predicted letters {result['lm_eval_predicted_letters']}",
    ]
    for precision in ("fp32", "bf16"):
        r = result[precision]
        lines.append(
            f"- mcqtune {precision}: identical predictions {r['identical_predictions']}/{len(examples)} "
            f"({r['agreement'] * 100:.1f}%), accuracy {r['mcqtune_accuracy'] * 100:.1f}%, "
            "max score difference after the per-question offset "
            f"{r['max_abs_score_difference_after_offset']:.2e}"
        )
        for d in r["disagreements"]:
            lines.append(
                f"  - {d['id']}: lm-eval {d['lm_eval']} (margin {d['lm_eval_margin']:.2e}), mcqtune "
                f"{d['mcqtune']} (margin {d['mcqtune_margin']:.2e}), gold {d['gold']}"
            )
    text = "\n".join(lines) + "\n"
    (out / "parity.md").write_text(text)
    print(text)
    print(f"wrote {out / 'parity.json'} and {out / 'parity.md'}")
    return 0 if result["fp32"]["agreement"] >= 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
