"""``eval``: letter-logit scoring (mcqtune eval's defaults) vs greedy generate-and-parse: questions/s,
accuracy, and agreement where the first generated token is a letter.
"""

from __future__ import annotations

from typing import Any

from bench.context import Context
from bench.spawn import log


def section_eval(ctx: Context) -> dict[str, Any]:
    """Item 4: letter-logit scoring (mcqtune eval's defaults) vs greedy generate-and-parse."""
    import numpy as np
    import torch
    from bench.helpers import Timings
    from bench.naive import generate_and_parse
    from bench.notebook_tokenizer import notebook_tokenizer
    from transformers import AutoModelForCausalLM

    from mcqtune.evaluation.evaluate import score_examples
    from mcqtune.inference import Predictor

    s = ctx.settings
    rows = ctx.rows("medmcqa", "validation", s.eval_rows)
    fp32_model = Predictor(None, device=ctx.cpu, precision="fp32").module()
    ours_model = (
        fp32_model
        if ctx.precision == "fp32"
        else Predictor(None, device=ctx.cpu, precision=ctx.precision).module()
    )
    gen_model = AutoModelForCausalLM.from_pretrained(ctx.resolved.path, dtype=torch.float32)
    gen_tokenizer = notebook_tokenizer(ctx.resolved.path)
    timings = {"a": Timings(), "b": Timings()}
    scores = np.full((len(rows), max(len(r.choices) for r in rows)), -np.inf)
    generated_pred, first_letter = [], []
    chunks = [list(range(i, min(i + s.eval_chunk, len(rows)))) for i in range(0, len(rows), s.eval_chunk)]
    log(f"eval: {len(rows)} MedMCQA rows, chunks of {s.eval_chunk}, A-B-B-A")
    results: dict[int, Any] = {}
    for i, idx in enumerate(chunks):
        chunk_rows = [rows[j] for j in idx]
        for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
            if side == "a":
                scored = score_examples(
                    ours_model,
                    ctx.encoder,
                    chunk_rows,
                    "letter",
                    batch_size=s.eval_chunk,
                    precision=ctx.precision,
                )
                timings["a"].add(scored.seconds, 0, len(chunk_rows))
                scores[idx, : scored.scores.shape[1]] = scored.scores
            else:
                gen = generate_and_parse(
                    gen_model, gen_tokenizer, ctx.encoder, chunk_rows, max_new_tokens=ctx.generate_tokens
                )
                timings["b"].add(gen.seconds, 0, len(chunk_rows))
                results[i] = gen
    for i in range(len(chunks)):
        generated_pred += results[i].predictions.tolist()
        first_letter += results[i].first_is_letter.tolist()
    generated_pred = np.array(generated_pred)
    first_letter = np.array(first_letter, dtype=bool)
    fp32_scored = score_examples(
        fp32_model, ctx.encoder, rows, "letter", batch_size=s.eval_chunk, precision="fp32"
    )
    gold = np.array([r.answer for r in rows])
    letter_pred = scores.argmax(1)
    fp32_pred = fp32_scored.predictions
    subset = first_letter
    ratio = timings["a"].questions_per_second() / max(timings["b"].questions_per_second(), 1e-9)
    return {
        "rows": len(rows),
        "max_new_tokens": ctx.generate_tokens,
        "letter_scoring": timings["a"].to_dict() | {"precision": ctx.precision, "batch_size": s.eval_chunk},
        "letter_scoring_fp32_questions_per_second": round(len(rows) / fp32_scored.seconds, 2),
        "generate_and_parse": timings["b"].to_dict() | {"precision": "fp32", "batch_size": 1},
        "ratio_questions_per_second": round(ratio, 2),
        "accuracy": {
            f"letter_scoring_{ctx.precision}": round(float((letter_pred == gold).mean()), 4),
            "letter_scoring_fp32": round(float((fp32_pred == gold).mean()), 4),
            "generate_and_parse": round(float((generated_pred == gold).mean()), 4),
            "generate_unparsed": int((generated_pred < 0).sum()),
        },
        "first_token_is_letter": {
            "rows": int(subset.sum()),
            "agreement_fp32": int((fp32_pred[subset] == generated_pred[subset]).sum()),
            f"agreement_{ctx.precision}": int((letter_pred[subset] == generated_pred[subset]).sum()),
            "accuracy_letter_fp32": _mean(fp32_pred[subset] == gold[subset]),
            "accuracy_generate": _mean(generated_pred[subset] == gold[subset]),
        },
    }


def _mean(values) -> float | None:
    return round(float(values.mean()), 4) if len(values) else None
