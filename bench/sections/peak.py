"""``peak``: the fp32 and bf16 matmul peak of this CPU (GFLOP/s), the denominator of the training MFU.

Kept on the context (``ctx.peak_gflops``) for the sections after it; a section that needs the peak
when this one did not run calls it itself."""

from __future__ import annotations

from typing import Any

from bench.context import Context


def section_peak(ctx: Context) -> dict[str, Any]:
    from bench.helpers import matmul_peaks

    s = ctx.settings
    by_size = {str(n): matmul_peaks(n, s.matmul_seconds, s.matmul_rounds) for n in s.matmul_sizes}
    best = {k: max(v[k] for v in by_size.values()) for k in ("fp32", "bf16")}
    ctx.peak_gflops = best
    return {"gflops": best, "by_size": by_size, "bf16_over_fp32": round(best["bf16"] / best["fp32"], 2)}
