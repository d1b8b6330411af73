"""Writing `mcqtune compare` results: CSV, Markdown table and a self-contained HTML page.

The cells come from :mod:`mcqtune.compare.table`, the sentences from :mod:`mcqtune.compare.reading`,
the PNG plots (embedded in the HTML) from :mod:`mcqtune.compare.plots`.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any

from mcqtune.atomic import atomic_write_text
from mcqtune.compare.evidence import ZERO_SHOT
from mcqtune.compare.reading import ci_overlap, reading_of_results
from mcqtune.compare.table import (
    DASH,
    TABLE_HEADER,
    TRANSFER_HEADER,
    UNPACKED_NOTE,
    fmt_letters,
    fmt_pct,
    fmt_seconds,
    is_scored,
    is_unpacked,
    shown_columns,
    table_cells,
    table_header,
    transfer_sets,
)

CSV_COLUMNS = (
    "method",
    "status",
    "error",
    "objective",
    "scoring",
    "lr",
    "n_eval",
    "accuracy",
    "accuracy_spread",
    "seeds",
    "ci95_low",
    "ci95_high",
    "majority_baseline",
    "accuracy_minus_baseline",
    "vs_best_p",
    "vs_best_p_holm",
    "vs_best_significant",
    "lr_tuned",
    "predicted_letter_distribution",
    "letter_tv_distance",
    "permutation_accuracy",
    "trainable_params",
    "trainable_percent",
    "total_params",
    "artifact_bytes",
    "train_seconds",
    "train_tokens_per_second",
    "steps",
    "examples_seen",
    "best_step",
    "wall_seconds",
    "peak_memory_bytes",
    "peak_memory_kind",
    "eval_questions_per_second",
    "run_dir",
)


# ------------------------------------------------------------------------------------------- CSV / MD
def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        out = dict(row)
        out["predicted_letter_distribution"] = fmt_letters(row.get("predicted_letter_distribution")).replace(
            DASH, ""
        )
        test = row.get("vs_best") or {}
        out["vs_best_p"], out["vs_best_p_holm"] = test.get("p_value"), test.get("p_holm")
        out["vs_best_significant"] = test.get("significant")
        writer.writerow({k: "" if out.get(k) is None else out[k] for k in CSV_COLUMNS})
    atomic_write_text(path, buffer.getvalue())


def _setup_sentence(results: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    shared = results.get("shared", {})
    sizes = sorted({r["n_eval"] for r in rows if r.get("n_eval")})
    n = sizes[0] if len(sizes) == 1 else "/".join(map(str, sizes)) if sizes else None
    scoring = next((r["scoring"] for r in rows if r.get("scoring")), "?")
    objective = next((r["objective"] for r in rows if r.get("objective") and r["method"] != ZERO_SHOT), None)
    trained = [r for r in rows if r["method"] != ZERO_SHOT]
    budget = results.get("budget") or {}
    if budget.get("kind") == "time":
        length = (
            f"for {fmt_seconds(budget['seconds'])} of training each (as many steps as fit; steps per "
            f"method in results.json) × batch {shared.get('batch_size')} × accumulation "
            f"{shared.get('grad_accum')} (seed {shared.get('seed')})"
        )
    else:
        length = (
            f"for {shared.get('max_steps')} steps × batch {shared.get('batch_size')} × accumulation "
            f"{shared.get('grad_accum')} ({results.get('examples_seen')} examples seen, "
            f"seed {shared.get('seed')})"
        )
    seeds = results.get("seeds") or 1
    first_seed = shared.get("seed", 0)
    repeats = (
        f" Each method trained {seeds} times (seeds {first_seed}–{first_seed + seeds - 1}):"
        " accuracy is the mean ± the sample standard deviation over seeds, its CI the mean of theirs."
        if seeds > 1
        else ""
    )
    return (
        f"{len(trained)} method(s) trained on `{shared.get('train')}` with the "
        f"{objective or shared.get('objective')} objective {length}, model "
        f"`{shared.get('model')}`; all rows evaluated on the same {n} `{shared.get('validation')}` "
        f"questions with {scoring} scoring.{repeats}"
        + (
            " Cloze scoring reads each option after the question alone, so option order cannot change it:"
            " its permutation-averaged accuracy is its accuracy."
            if scoring == "cloze"
            else ""
        )
    )


def markdown_table(rows: list[dict[str, Any]]) -> str:
    keep = shown_columns(rows)
    full_header, sets = table_header(rows), transfer_sets(rows)
    header = [full_header[i] for i in keep]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = table_cells(row, sets)
        lines.append("| " + " | ".join(cells[i] for i in keep) + " |")
    return "\n".join(lines)


def markdown_report(results: dict[str, Any]) -> str:
    rows = results["rows"]
    parts = ["## mcqtune compare", "", _setup_sentence(results, rows), "", markdown_table(rows), ""]
    if any(is_unpacked(r) for r in rows):
        parts += [UNPACKED_NOTE, ""]
    if not results.get("complete", True):
        parts.insert(2, f"**Partial results** ({len(rows)} of {len(results.get('methods', [])) + 1} rows).\n")
    reading = reading_of_results(results)
    if reading:
        parts += ["**Reading.**", ""] + [f"- {line}" for line in reading] + [""]
    if results.get("command"):
        parts += [f"Command: `{results['command']}`", ""]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1400px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.3em .45em;text-align:right;white-space:nowrap}
th{background:#f3f3f3;white-space:normal;vertical-align:bottom;max-width:7em}
td:first-child,th:first-child{text-align:left;font-weight:600}
tr.failed td{color:#a00;background:#fff4f4}tr.zero td{background:#f7f7fb}
td.err,td.text{text-align:left;white-space:normal}td.differs{color:#a00;font-weight:600}
.plots figure{margin:0 0 1.5em 0}.plots img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555;max-width:950px}
pre{background:#f6f6f6;padding:.7em;white-space:pre-wrap;word-break:break-all;font-size:.85em}
.note{color:#555;font-size:.9em;max-width:1000px}
.warn{background:#fff6d5;padding:.5em;border:1px solid #e8d48a}
"""


def _inline(md: str) -> str:
    """The reading's tiny Markdown (**bold**, `code`) to HTML, after escaping."""
    out = html.escape(md)
    for marker, tag in (("**", "strong"), ("`", "code")):
        pieces = out.split(marker)
        out = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(pieces))
    return out


def _html_table(rows: list[dict[str, Any]]) -> str:
    keep = shown_columns(rows)
    full_header, sets = table_header(rows), transfer_sets(rows)
    head = "".join(f"<th>{html.escape(full_header[i])}</th>" for i in keep)
    groups = ""
    if sets:  # a header row naming each column group: in-domain, then one per further data set
        own = sum(1 for i in keep if i < len(TABLE_HEADER))
        groups = (
            f"<tr><th colspan='{own}'>in-domain (validation)</th>"
            + "".join(
                f"<th colspan='{len(TRANSFER_HEADER)}'>transfer: {html.escape(name)}</th>" for name in sets
            )
            + "</tr>"
        )
    body = []
    for row in rows:
        cells = table_cells(row, sets)
        if row.get("status") != "ok":
            body.append(
                f'<tr class="failed"><td>{html.escape(cells[0])}</td>'
                f'<td class="err" colspan="{len(keep) - 1}">{html.escape(cells[1])}</td></tr>'
            )
            continue
        cls = ' class="zero"' if row["method"] == ZERO_SHOT else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(cells[i])}</td>" for i in keep) + "</tr>")
    table = f"<table><thead>{groups}<tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f"<div class='scroll'>{table}</div>"


def _overlap_matrix(rows: list[dict[str, Any]]) -> str:
    ok = [r for r in rows if is_scored(r)]
    if len(ok) < 2:
        return ""
    head = "".join(f"<th>{html.escape(r['method'])}</th>" for r in ok)
    body = []
    for a in ok:
        cells = "".join(
            "<td>·</td>"
            if a is b
            else "<td>overlap</td>"
            if ci_overlap(a, b)
            else "<td class='differs'>differs</td>"
            for b in ok
        )
        body.append(f"<tr><td>{html.escape(a['method'])}</td>{cells}</tr>")
    return (
        "<p class='note'>Which 95% CIs overlap (overlap: the difference is not established at this n, a "
        "conservative test; differs: the intervals are disjoint).</p>"
        f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _trial_cell(scores: dict[int, float | None], steps: int) -> str:
    if steps not in scores:
        return ""  # pruned before this rung
    return "failed" if scores[steps] is None else fmt_pct(scores[steps])


def _tuning_table(results: dict[str, Any]) -> str:
    """Every trial of --tune: its dev accuracy after each rung's steps (blank: pruned before that rung)."""
    tuning = results.get("tuning")
    if not tuning:
        return ""
    steps = sorted(
        {int(s) for v in tuning["methods"].values() for t in v["trials"] for s in t["dev_accuracy"]}
    )
    head = "".join(f"<th>dev accuracy after {s} steps</th>" for s in steps)
    body = []
    for method, v in tuning["methods"].items():
        for trial in v["trials"]:
            scores = {int(s): a for s, a in trial["dev_accuracy"].items()}
            mark = " (chosen)" if trial["lr"] == v["chosen"] else ""
            cells = "".join(f"<td>{_trial_cell(scores, s)}</td>" for s in steps)
            body.append(f"<tr><td>{html.escape(method)}</td><td>{trial['lr']:g}{mark}</td>{cells}</tr>")
    dev = tuning["dev"]
    return (
        "<h2>Learning-rate tuning</h2>"
        f"<p class='note'>Dev split: {dev['size']} rows of the training data (seed {dev['seed']}), none "
        f"repeating a validation or further-set question; trials trained on the other {dev['train_rows']} "
        "rows. Successive halving: every candidate trains the first rung's steps, the better half twice as "
        "many; the last rung's dev accuracy picks the learning rate.</p>"
        f"<table><thead><tr><th>method</th><th>lr</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _kv_table(data: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td class='text'>{html.escape(str(v))}</td></tr>"
        for k, v in data.items()
    )
    return f"<table><tbody>{rows}</tbody></table>"


_CAPTIONS = {
    "accuracy_vs_params.png": "Accuracy (95% CI bars) vs trainable parameters, log axis; the solid line "
    "joins the Pareto-optimal methods (none both cheaper and more accurate). Dashed: zero-shot (band: its "
    "CI); dotted: majority-letter baseline.",
    "accuracy_vs_time.png": "Accuracy (95% CI bars) vs training wall time (training steps only); the solid "
    "line joins the Pareto-optimal methods.",
    "peak_memory.png": "Peak memory of each method's own process (RSS on CPU, CUDA max allocated on GPU).",
    "learning_curves.png": "Validation accuracy at each evaluation step (on the learning-curve subset).",
}


def html_report(results: dict[str, Any], plots: list[Path]) -> str:
    rows = results["rows"]
    reading = reading_of_results(results)
    figures = []
    for path in plots:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        caption = _CAPTIONS.get(path.name, path.name)
        figures.append(
            f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    per_method = results.get("per_method", {})
    method_rows = {
        m: f"lr {v['lr'] if v.get('lr') is not None else 'method default'}; "
        f"options {v.get('method_options') or {}}"
        for m, v in per_method.items()
    }
    machine = dict(results.get("machine", {}))
    seconds = results.get("seconds")
    partial = ""
    if not results.get("complete", True):
        partial = (
            f"<p class='warn'>Partial results: {len(rows)} of {len(results.get('methods', [])) + 1} rows "
            "(the run is still going or was interrupted; rerun with --resume).</p>"
        )
    config_text = results.get("config_text")
    config_block = (
        f"<p>--config {html.escape(str(results.get('config_file')))}:</p>"
        f"<pre>{html.escape(config_text)}</pre>"
        if config_text
        else "<p>No --config file (built-in defaults).</p>"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>mcqtune compare</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>mcqtune compare: which fine-tuning method?</h1>",
        partial,
        f"<p>{_inline(_setup_sentence(results, rows))}</p>",
        "<h2>Reading of the results</h2>",
        "<ul>" + "".join(f"<li>{_inline(line)}</li>" for line in reading) + "</ul>",
        "<h2>Results</h2>",
        _html_table(rows),
        "<p class='note'>Accuracy on the final evaluation set with its 95% Wilson interval; majority "
        "baseline = always answering the most frequent gold letter; letter TV = total-variation distance "
        "between predicted and gold letter distributions (0 = no letter bias); train time and tok/s count "
        "the training steps only; peak memory is each method's own process.</p>",
        f"<p class='note'>{html.escape(UNPACKED_NOTE)}</p>" if any(is_unpacked(r) for r in rows) else "",
        _overlap_matrix(rows),
        _tuning_table(results),
        "<h2>Plots</h2>",
        '<div class="plots">' + "".join(figures) + "</div>",
        "<h2>Command and configuration</h2>",
        f"<pre>{html.escape(results.get('command') or '(called from Python)')}</pre>",
        "<p>Shared by every method:</p>",
        _kv_table(results.get("shared", {})),
        "<p>Per method (from configs/methods/&lt;name&gt;.yaml unless overridden):</p>",
        _kv_table(method_rows),
        config_block,
        "<h2>Machine and libraries</h2>",
        _kv_table(machine),
        _kv_table(results.get("versions", {})),
        f"<p class='note'>Total compare wall time: {fmt_seconds(seconds)}.</p>" if seconds else "",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"
