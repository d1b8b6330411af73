"""``cloze``: packed options vs K copies of the question: fp32 log-likelihood equality, eval and
ranking-training questions/s, on ARC-Easy and MedMCQA.
"""

from __future__ import annotations

from typing import Any

from bench.context import Context
from bench.spawn import log


def section_cloze(ctx: Context) -> dict[str, Any]:
    """Item 3: packed options vs one row per option, fp32 equality, eval and ranking-training speed."""
    from bench.helpers import McqtuneStepper, Timings, cloze_logliks, max_abs_difference, option_lengths

    from mcqtune.evaluation.evaluate import score_examples
    from mcqtune.inference import Predictor

    s = ctx.settings
    pad = ctx.tokenizer.pad_token_id
    fp32 = Predictor(None, device=ctx.cpu, precision="fp32").module()
    timed = (
        fp32 if ctx.precision == "fp32" else Predictor(None, device=ctx.cpu, precision=ctx.precision).module()
    )
    out: dict[str, Any] = {}
    for dataset in ("arc_easy", "medmcqa"):
        log(f"cloze: {dataset}")
        rows = ctx.rows(dataset, "validation", max(s.cloze_equal_rows, s.cloze_eval_rows))
        features = ctx.encoder.encode_cloze(rows[: s.cloze_equal_rows]).features
        packed = cloze_logliks(fp32, features, pad, packed=True)
        copies = cloze_logliks(fp32, features, pad, packed=False)
        lengths = option_lengths(features, packed.shape[1])  # scoring ranks by the mean log-likelihood
        equality = {
            "rows": len(features),
            "max_abs_loglik_difference": max_abs_difference(packed, copies),
            "same_predictions": int(((packed / lengths).argmax(1) == (copies / lengths).argmax(1)).sum()),
        }

        eval_rows = rows[: s.cloze_eval_rows]
        timings = {"a": Timings(), "b": Timings()}
        chunk = 16
        chunks = [eval_rows[i : i + chunk] for i in range(0, len(eval_rows), chunk)]
        for i, chunk_rows in enumerate(chunks):
            for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
                kwargs = {"batch_size": 16, "packed": side == "a", "precision": ctx.precision}
                scored = score_examples(timed, ctx.encoder, chunk_rows, "cloze", **kwargs)
                timings[side].add(scored.seconds, 0, len(chunk_rows))
        eval_ratio = timings["a"].questions_per_second() / max(timings["b"].questions_per_second(), 1e-9)

        config = ctx.lora_config("ranking", 2 * s.cloze_train_steps)
        train_rows = ctx.rows(dataset, "train", s.cloze_train_steps * s.batch_size)
        stepper = McqtuneStepper(config, ctx.resolved, ctx.encoder, train_rows)
        train_t = {"a": Timings(), "b": Timings()}
        for i in range(s.cloze_train_steps):
            features_i = stepper.next_features()
            for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
                stepper.objective.packed = side == "a"
                stepper.step(features_i, timings=train_t[side])
        w = min(1, s.cloze_train_steps - 1)
        train_ratio = train_t["a"].questions_per_second(w) / max(train_t["b"].questions_per_second(w), 1e-9)
        del stepper
        out[dataset] = {
            "equality_fp32": equality,
            "eval": {
                "rows": len(eval_rows),
                "packed": timings["a"].to_dict(),
                "copies": timings["b"].to_dict(),
                "ratio_questions_per_second": round(eval_ratio, 2),
            },
            "ranking_train": {
                "steps": s.cloze_train_steps,
                "batch_size": s.batch_size,
                "packed": train_t["a"].to_dict(w),
                "copies": train_t["b"].to_dict(w),
                "ratio_questions_per_second": round(train_ratio, 2),
            },
        }
    return out
