"""The benchmark's one table (measurement, mcqtune, baseline, ratio, target, status) from its results,
and the results block it writes into docs/PERFORMANCE.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.context import ROOT, TARGETS

# One line of the table: (measurement, mcqtune, baseline, ratio, target, status).
Row = tuple[str, str, str, str, str, str]


def _fmt(value: Any, spec: str = ".1f", unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:{spec}}{unit}"


def _status(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "NOT MET")


def _training_peak(record: dict[str, Any]) -> float:
    """Peak RSS of the training phase (after the model load), else of the whole process."""
    return record.get("peak_rss_training_mib") or record["peak_rss_mib"]


def summarize(results: dict[str, Any]) -> list[Row]:
    """Rows of the one table: (measurement, mcqtune, baseline, ratio, target, status)."""
    sec = results["sections"]
    peak = (sec.get("peak") or {}).get("gflops")
    memory = sec.get("memory") or {}
    return [
        *_trl_rows(sec.get("trl")),
        *_train_rows(sec.get("train"), peak),
        *_peak_rows(peak),
        *_training_memory_rows(memory),
        *_cloze_rows(sec.get("cloze") or {}),
        *_eval_rows(sec.get("eval")),
        *_method_memory_rows(memory),
        *_startup_rows(sec.get("startup") or {}),
        *_curve_rows(sec.get("memory_curve") or {}),
        *_lm_eval_rows(sec.get("lm_eval") or {}),
    ]


def _trl_rows(trl: dict[str, Any] | None) -> list[Row]:
    """The headline: the recipe users actually run (TRL's SFTTrainer) against ``mcqtune train``, both in
    the precision mcqtune resolves on this host (named in every row); then TRL left at its defaults,
    real-token share and MFU of both, the accuracy of both artifacts."""
    rows: list[Row] = []
    if not trl or "error" in trl:
        return rows
    precision = trl["precision"]
    work = f"{trl['steps']} LoRA steps b{trl['batch_size']}, {precision} both"
    baseline = f" (TRL SFTTrainer, {precision})"
    rows.append(
        (
            f"0 {work}, whole process wall s",
            _fmt(trl["mcqtune"]["wall_seconds"], ".0f"),
            _fmt(trl["trl"]["wall_seconds"], ".0f") + baseline,
            _fmt(trl["wall_ratio"], ".2f", "x"),
            ">= 3x",
            _status(trl["wall_ratio"] >= TARGETS["train_ratio"]),
        )
    )
    rows.append(
        (
            f"0 {work}, peak RSS MiB",
            _fmt(trl["mcqtune"]["peak_rss_mib"], ".0f"),
            _fmt(trl["trl"]["peak_rss_mib"], ".0f") + baseline,
            _fmt(trl["peak_rss_ratio"], ".2f", "x"),
            "< 1x",
            _status(trl["peak_rss_ratio"] < 1.0),
        )
    )
    if "mcqtune_checkpointed" in trl:  # TRL's own memory strategy (gradient checkpointing) on both sides
        for label, key, ratio, target in (
            ("wall s", "wall_seconds", "checkpointed_wall_ratio", ">= 3x"),
            ("peak RSS MiB", "peak_rss_mib", "checkpointed_peak_rss_ratio", "< 1x"),
        ):
            ok = trl[ratio] >= TARGETS["train_ratio"] if target == ">= 3x" else trl[ratio] < 1.0
            rows.append(
                (
                    f"0 {work}, --gradient-checkpointing, {label}",
                    _fmt(trl["mcqtune_checkpointed"][key], ".0f"),
                    _fmt(trl["trl"][key], ".0f") + baseline,
                    _fmt(trl[ratio], ".2f", "x"),
                    target,
                    _status(ok),
                )
            )
    rows.extend(_trl_defaults_rows(trl))
    rows.extend(_trl_efficiency_rows(trl))
    acc = trl["accuracy"]
    rows.append(
        (
            f"0 val accuracy after it (n={acc['mcqtune']['n']}, letter, {precision})",
            _fmt(acc["mcqtune"]["accuracy"] * 100, ".1f", "%"),
            _fmt(acc["trl"]["accuracy"] * 100, ".1f", "%") + baseline,
            _fmt(trl["accuracy_difference_points"], "+.1f", " pt"),
            ">= TRL's CI low",
            _status(acc["mcqtune"]["accuracy"] >= acc["trl"]["ci95"][0]),  # not below TRL's 95% CI
        )
    )
    return rows


def _trl_defaults_rows(trl: dict[str, Any]) -> list[Row]:
    """TRL left at its defaults (its precision named) against mcqtune's run: measured, or the same run
    as the equal-precision one, or extrapolated from a few steps (said so)."""
    d = trl.get("trl_defaults")
    if not d:
        return []
    label = (
        f"0 {trl['steps']} LoRA steps b{trl['batch_size']}, TRL at its defaults ({d['precision']}), wall s"
    )
    if "extrapolated_wall_seconds" in d:
        baseline = (
            f"{d['extrapolated_wall_seconds']:.0f} EXTRAPOLATED from {d['measured_steps']} step(s) "
            f"at {d['seconds_per_step']:.1f} s/step"
        )
    else:
        baseline = f"{d['wall_seconds']:.0f} (the run above: TRL's default here is {d['precision']})"
    return [
        (
            label,
            _fmt(trl["mcqtune"]["wall_seconds"], ".0f") + f" ({trl['precision']})",
            baseline,
            _fmt(d["wall_ratio"], ".2f", "x"),
            "",
            "-",
        )
    ]


def _trl_efficiency_rows(trl: dict[str, Any]) -> list[Row]:
    """Real-token share (real / computed tokens) and MFU (4N per real token over the matmul peak of the
    precision used) of both recipes' equal-precision runs."""
    t = trl.get("throughput")
    if not t:
        return []
    ours, theirs, precision = t["mcqtune"], t["trl"], trl["precision"]
    rows: list[Row] = [
        (
            "0 real-token share (real / computed tokens)",
            _fmt(ours["real_token_share"] and ours["real_token_share"] * 100, ".0f", "%"),
            _fmt(theirs["real_token_share"] and theirs["real_token_share"] * 100, ".0f", "%") + " (TRL)",
            "",
            "",
            "-",
        )
    ]
    if ours["mfu"] is not None and theirs["mfu"] is not None:
        rows.append(
            (
                f"0 MFU (4N/real token) vs {precision} matmul peak",
                _fmt(ours["mfu"] * 100, ".1f", "%") + f" ({ours['real_tokens_per_second']:.0f} tok/s)",
                _fmt(theirs["mfu"] * 100, ".1f", "%")
                + f" (TRL, {theirs['real_tokens_per_second']:.0f} tok/s)",
                _fmt(ours["mfu"] / theirs["mfu"], ".2f", "x") if theirs["mfu"] else "",
                "",
                "-",
            )
        )
    return rows


def _train_rows(train: dict[str, Any] | None, peak: dict[str, float] | None) -> list[Row]:
    """Section 1 and the MFU against section 2's peak (recorded into ``train['mfu']``)."""
    from bench import helpers

    rows: list[Row] = []
    if train and "error" not in train:
        ratio = train["ratio_tokens_per_second"]
        rows.append(
            (
                "1 LoRA train, real tok/s",
                _fmt(train["mcqtune"]["tokens_per_second"]),
                _fmt(train["naive"]["tokens_per_second"]) + " (naive Trainer)",
                _fmt(ratio, ".2f", "x"),
                ">= 3x",
                _status(ratio >= TARGETS["train_ratio"]),
            )
        )
        acc = train["accuracy"]
        diff = train["accuracy_difference_points"]
        rows.append(
            (
                f"1 val accuracy after {train['examples']} ex (n={acc['mcqtune']['n']})",
                _fmt(acc["mcqtune"]["accuracy"] * 100, ".1f", "%"),
                _fmt(acc["naive"]["accuracy"] * 100, ".1f", "%")
                + f" (0-shot {acc['zero_shot']['accuracy'] * 100:.1f}%)",
                _fmt(diff, "+.1f", " pt"),
                "+-1 pt",
                _status(abs(diff) <= TARGETS["accuracy_points"]),
            )
        )
        if peak:
            flops = helpers.train_flops_per_token(train["non_embedding_params"], trains_base=False)
            ours = train.get("precision", "bf16")  # the precision mcqtune trained in (auto, resolved)
            mfu = helpers.mfu(train["mcqtune"]["tokens_per_second"], flops, peak[ours])
            naive_mfu = helpers.mfu(train["naive"]["tokens_per_second"], flops, peak["fp32"])
            rows.append(
                (
                    "2 MFU (4N/token) vs matmul peak",
                    _fmt(mfu * 100, ".1f", f"% of {ours}"),
                    _fmt(naive_mfu * 100, ".1f", "% of fp32"),
                    "",
                    ">= 50%",
                    _status(mfu >= TARGETS["mfu"]),
                )
            )
            train["mfu"] = {
                f"mcqtune_vs_{ours}_peak": round(mfu, 4),
                "naive_vs_fp32_peak": round(naive_mfu, 4),
            }
    return rows


def _peak_rows(peak: dict[str, float] | None) -> list[Row]:
    """The matmul peak itself."""
    rows: list[Row] = []
    if peak:
        rows.append(
            (
                "2 matmul peak GFLOP/s",
                _fmt(peak["bf16"], ".0f", " bf16"),
                _fmt(peak["fp32"], ".0f", " fp32"),
                _fmt(peak["bf16"] / peak["fp32"], ".2f", "x"),
                "",
                "-",
            )
        )
    return rows


def _training_memory_rows(memory: dict[str, Any]) -> list[Row]:
    """LoRA's training peak against the naive Trainer's, at the same batch."""
    rows: list[Row] = []
    naive_mem = memory.get("naive") or {}
    lora_mem = (memory.get("runs") or {}).get("lora/auto") or {}
    if "peak_rss_mib" in naive_mem and "peak_rss_mib" in lora_mem:
        ours, theirs = _training_peak(lora_mem), _training_peak(naive_mem)
        rows.append(
            (
                f"1 peak RSS MiB training | process, batch {memory['batch_size']}",
                f"{ours:.0f} | {lora_mem['peak_rss_mib']:.0f}",
                f"{theirs:.0f} | {naive_mem['peak_rss_mib']:.0f} (naive Trainer)",
                _fmt(ours / theirs, ".2f", "x"),
                "",
                "-",
            )
        )
    return rows


def _cloze_rows(cloze: dict[str, Any]) -> list[Row]:
    """Packed options against K copies, per data set: speed and fp32 equality."""
    rows: list[Row] = []
    for dataset, c in cloze.items():
        if not isinstance(c, dict) or "eval" not in c:
            continue
        diff = c["equality_fp32"]["max_abs_loglik_difference"]
        for kind, label in (("eval", "eval"), ("ranking_train", "ranking train")):
            r = c[kind]["ratio_questions_per_second"]
            rows.append(
                (
                    f"3 cloze {label} q/s, {dataset}",
                    _fmt(c[kind]["packed"]["questions_per_second"], ".2f") + " packed",
                    _fmt(c[kind]["copies"]["questions_per_second"], ".2f") + " K copies",
                    _fmt(r, ".2f", "x"),
                    ">= 2x",
                    _status(r >= TARGETS["cloze_ratio"]),
                )
            )
        rows.append(
            (
                f"3 max |dloglik| fp32, {dataset}",
                _fmt(diff, ".1e"),
                f"{c['equality_fp32']['same_predictions']}/{c['equality_fp32']['rows']} same argmax",
                "",
                "<= 1e-3",
                _status(diff <= TARGETS["cloze_max_abs"]),
            )
        )
    return rows


def _eval_rows(ev: dict[str, Any] | None) -> list[Row]:
    """Letter-logit scoring against generate-and-parse."""
    rows: list[Row] = []
    if ev and "error" not in ev:
        r = ev["ratio_questions_per_second"]
        rows.append(
            (
                "4 eval q/s: letter logits vs generate",
                _fmt(ev["letter_scoring"]["questions_per_second"], ".2f"),
                _fmt(ev["generate_and_parse"]["questions_per_second"], ".2f"),
                _fmt(r, ".1f", "x"),
                ">= 20x",
                _status(r >= TARGETS["eval_ratio"]),
            )
        )
        fl = ev["first_token_is_letter"]
        same = fl["rows"] > 0 and fl["agreement_fp32"] == fl["rows"]
        rows.append(
            (
                f"4 same answers when 1st token is a letter ({fl['rows']}/{ev['rows']})",
                _fmt(fl["accuracy_letter_fp32"], ".3f") + " acc",
                _fmt(fl["accuracy_generate"], ".3f") + " acc",
                f"{fl['agreement_fp32']}/{fl['rows']} agree",
                "equal",
                _status(same if fl["rows"] else None),
            )
        )
    return rows


def _method_memory_rows(memory: dict[str, Any]) -> list[Row]:
    """Every method's training peak and frozen-base bytes; QLoRA's target."""
    rows: list[Row] = []
    if memory.get("runs"):
        fp32_ref = (memory["runs"].get("lora/fp32") or {}).get("parameters", {}).get("frozen_base_bytes")
        lora_fp32 = memory["runs"].get("lora/fp32") or {}
        lora_fp32_rss = _training_peak(lora_fp32) if "peak_rss_mib" in lora_fp32 else None
        for key, run in memory["runs"].items():
            if "error" in run:
                rows.append((f"5 {key}", "failed", run["error"], "", "", "-"))
                continue
            frozen = run["parameters"]["frozen_base_bytes"]
            share = frozen / fp32_ref if fp32_ref else None
            target, status = "", "-"
            if key.startswith("qlora"):
                target = "<=0.35x, RSS<lora/fp32"
                status = _status(
                    share is not None
                    and share <= TARGETS["qlora_frozen_ratio"]
                    and lora_fp32_rss is not None
                    and _training_peak(run) < lora_fp32_rss
                )
            rows.append(
                (
                    f"5 {key}: peak RSS MiB training | process",
                    f"{_training_peak(run):.0f} | {run['peak_rss_mib']:.0f}",
                    _fmt(frozen / 2**20, ".0f") + " MiB frozen",
                    _fmt(share, ".2f", "x fp32"),
                    target,
                    status,
                )
            )
    return rows


def _startup_rows(st: dict[str, Any]) -> list[Row]:
    """``mcqtune eval`` start-up, cached model against the first GGUF load."""
    rows: list[Row] = []
    best = st.get("cached_best")
    cold = next((r.get("seconds") for r in st.get("cold", []) if "seconds" in r), None)
    if best:
        rows.append(
            (
                "6 eval start -> 1st batch s (cached | cold)",
                _fmt(best["to_first_batch"], ".1f"),
                _fmt(cold and cold["to_first_batch"], ".1f") + " cold GGUF",
                "",
                "",
                "-",
            )
        )
        rows.append(
            (
                "6 model load s (cached | cold)",
                _fmt(best["model_load"], ".2f"),
                _fmt(cold and cold["model_load"], ".2f") + " cold GGUF",
                "",
                "<= 3 s",
                _status(best["model_load"] <= TARGETS["cached_load_seconds"]),
            )
        )
    return rows


def _curve_rows(curve: dict[str, Any]) -> list[Row]:
    """RSS kept over training steps (after the trainer's releases of freed memory), per run."""
    rows: list[Row] = []
    for key, run in (curve.get("runs") or {}).items():
        if "retained_late_over_early" not in run:
            rows.append((f"5 RSS curve {key}", "failed", str(run.get("error", "")), "", "", "-"))
            continue
        rows.append(
            (
                f"5 RSS kept after releases, steps {run['early_step']}-{run['late_step']}, max / first, "
                f"{key}",
                _fmt(run["retained_late_over_early"], ".3f", "x"),
                f"step {run['late_step']} / {run['early_step']}: {run['last_over_early']:.2f}x; "
                f"peak {run['peak_rss_mib']:.0f} MiB",
                "",
                f"<= {TARGETS['rss_growth']}x",
                _status(run["retained_late_over_early"] <= TARGETS["rss_growth"]),
            )
        )
    return rows


def _lm_eval_rows(lm_eval: dict[str, Any]) -> list[Row]:
    """Speed and per-question agreement against lm-evaluation-harness."""
    rows: list[Row] = []
    for scoring in ("letter", "cloze"):
        r = lm_eval.get(scoring)
        if not r:
            continue
        mine = "bf16" if "bf16" in r else "fp32"  # bf16 only where the CPU has it natively
        ours = r[mine]
        rows.append(
            (
                f"7 eval q/s vs lm-eval, {scoring} (n={lm_eval['rows']})",
                _fmt(ours["questions_per_second"], ".2f")
                + f" | fp32 {r['fp32']['questions_per_second']:.2f}",
                _fmt(r["lm_eval_questions_per_second"], ".2f") + " (lm-eval fp32)",
                _fmt(ours["speedup_vs_lm_eval"], ".2f", "x"),
                "",
                "-",
            )
        )
        rows.append(
            (
                f"7 same answers as lm-eval, {scoring} (fp32 | {mine})",
                f"{r['fp32']['identical_predictions']} | {ours['identical_predictions']}",
                f"of {lm_eval['rows']}",
                "",
                "fp32 >= 99%",
                _status(r["fp32"]["agreement"] >= 0.99),
            )
        )
    return rows


def format_table(rows: list[tuple[str, ...]]) -> str:
    header = ("measurement", "mcqtune", "baseline", "ratio", "target", "status")
    table = [header, *rows]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    lines = []
    for n, row in enumerate(table):
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


DOC = ROOT / "docs" / "PERFORMANCE.md"
DOC_BEGIN = "<!-- bench-results:begin (written by bench/run.py; do not edit by hand) -->"
DOC_END = "<!-- bench-results:end -->"


def results_block(results: dict[str, Any], table: str) -> str:
    m = results["machine"]
    start, end = results["load_average_start"][0], results["load_average_end"][0]
    # The 1-minute load average at the end includes the benchmark's own threads (~2 on 2 cores): only
    # the load before it started says whether other work shared the machine.
    noisy = start > 0.5 * (m["cores"] or 1)
    lines = [
        f"Latest full run: {results['date']}, `make bench`, {results['total_seconds'] / 60:.1f} min "
        f"(sections: {', '.join(f'{k} {v:.0f} s' for k, v in results['section_seconds'].items())}).",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, AVX512-bf16 "
        f"{'yes' if m['avx512_bf16'] else 'no'}, torch {m['torch']} ({m['torch_threads']} threads), "
        f"Python {m['python']}; load average {start:.1f} at the start, {end:.1f} at the end (its own threads)"
        + (" (**other work was running: timings are pessimistic**)." if noisy else "."),
        "",
        table,
    ]
    return "\n".join(lines)


def update_doc(block: str, path: Path = DOC) -> bool:
    """Replace the results block of docs/PERFORMANCE.md; False if the markers are missing."""
    if not path.exists():
        return False
    text = path.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        return False
    head, rest = text.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    path.write_text(f"{head}{DOC_BEGIN}\n{block}\n{DOC_END}{tail}")
    return True
