"""`mcqtune compare` on the tiny model: every file written, the report's numbers equal results.json,
failures (an exception, an OOM kill) recorded without stopping the others, --resume skips finished rows."""

from __future__ import annotations

import csv
import json
import re
import textwrap
from pathlib import Path

import pytest

from mcqtune.compare.backends import RUN_RECORD
from mcqtune.compare.evidence import ZERO_SHOT
from mcqtune.compare.plan import QUICK_BUDGET, CompareSettings, default_methods, parse_methods, plan_configs
from mcqtune.compare.plots import PLOT_FILES, write_plots
from mcqtune.compare.reading import reading_of_results
from mcqtune.compare.report import html_report, markdown_report
from mcqtune.compare.runner import run_compare
from mcqtune.compare.table import DASH, TABLE_HEADER, fmt_number, table_cells
from mcqtune.config import ConfigError
from mcqtune.methods import METHODS
from mcqtune.methods.lora import LoraMethod

# Two methods that fail in the worker process: one raises MemoryError, one is SIGKILLed (what the
# kernel's OOM killer does). The worker script registers them there; the tests register them here.
WORKER_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys

    spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
    if spec["method"] == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    from mcqtune.methods.base import register
    from mcqtune.methods.lora import LoraMethod

    class Boom(LoraMethod):
        name = "boom"

        def apply(self, model, options):
            raise MemoryError("simulated: cannot allocate the optimizer state")

    register(Boom)
    from mcqtune.compare.worker import worker_main

    sys.exit(worker_main(sys.argv[1:]))
    """
)
METHODS_UNDER_TEST = ["full", "lora", "boom", "killed"]
FINAL_N = 12


class _Boom(LoraMethod):
    name = "boom"


class _Killed(LoraMethod):
    name = "killed"


@pytest.fixture(scope="module")
def fake_methods():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(METHODS, "boom", _Boom())
        mp.setitem(METHODS, "killed", _Killed())
        yield


def _settings(tmp: Path, model_dir: Path, **kwargs) -> CompareSettings:
    script = tmp / "worker_with_failures.py"
    script.write_text(WORKER_SCRIPT, encoding="utf-8")
    base = {
        "output": tmp / "cmp",
        "methods": list(METHODS_UNDER_TEST),
        "overrides": {
            "model": str(model_dir),
            "max_steps": 3,
            "batch_size": 2,
            "eval_steps": 2,
            "eval_limit": 8,
            "final_eval_limit": FINAL_N,
            "train_limit": 16,
        },
        "worker_args": [str(script)],
        "permutations": "cyclic",
        "echo": False,
        "command": "mcqtune compare --methods full,lora,boom,killed (test)",
    }
    return CompareSettings(**(base | kwargs))


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_model_dir, fake_methods):
    tmp = tmp_path_factory.mktemp("compare")
    settings = _settings(tmp, tiny_model_dir)
    result = run_compare(settings)
    results = json.loads((settings.output / "results.json").read_text(encoding="utf-8"))
    return settings, result, results


def _rows(results) -> dict[str, dict]:
    return {r["method"]: r for r in results["rows"]}


def _md_table(text: str) -> dict[str, dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[cells[0]] = dict(zip(header, cells, strict=False))
    return table


# ------------------------------------------------------------------------------------------- end to end
def test_every_output_file_is_written(compared):
    settings, result, _ = compared
    out = settings.output
    for name in ("results.json", "results.csv", "report.md", "report.html", *PLOT_FILES):
        assert (out / name).is_file(), name
    for name in PLOT_FILES:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, name
    assert set(result.files) >= {"results.json", "report.html", *PLOT_FILES}


def test_rows_share_the_budget_and_the_evaluation_set(compared):
    _, _, results = compared
    rows = _rows(results)
    assert [r["method"] for r in results["rows"]] == [ZERO_SHOT, *METHODS_UNDER_TEST]
    ok = [r for r in results["rows"] if r["status"] == "ok"]
    assert {r["method"] for r in ok} == {ZERO_SHOT, "full", "lora"}
    assert all(r["n_eval"] == FINAL_N for r in ok)
    assert all(r["scoring"] == "cloze" for r in ok)
    assert results["examples_seen"] == 6
    for name in ("full", "lora"):
        r = rows[name]
        assert r["steps"] == 3 and r["examples_seen"] == 6
        assert r["peak_memory_kind"] == "rss" and r["peak_memory_bytes"] > 50 * 2**20
        assert r["train_seconds"] > 0 and r["train_tokens_per_second"] > 0
        assert r["eval_questions_per_second"] > 0 and r["artifact_bytes"] > 0
        assert r["learning_curve"][0][0] == 0 and r["learning_curve"][-1][0] == 3
        assert 0 <= r["permutation_accuracy"] <= 1  # mcqtune.evaluation.analysis, cyclic orders
        low, high = r["ci95_low"], r["ci95_high"]
        assert low <= r["accuracy"] <= high
        assert r["accuracy_minus_baseline"] == pytest.approx(r["accuracy"] - r["majority_baseline"], abs=1e-4)
        pred, gold = r["predicted_letter_distribution"], r["gold_letter_distribution"]
        tv = 0.5 * sum(abs(pred[k] - gold[k]) for k in gold)
        assert r["letter_tv_distance"] == pytest.approx(tv, abs=1e-3)
    assert rows["full"]["trainable_params"] > rows["lora"]["trainable_params"] > 0
    assert rows["full"]["trainable_percent"] == pytest.approx(100.0)
    zero = rows[ZERO_SHOT]
    assert zero["trainable_params"] == 0 and zero["train_seconds"] == 0 and zero["peak_memory_bytes"] > 0
    # Each method keeps its own learning rate; everything in "shared" is the same for all.
    per_method = results["per_method"]
    assert per_method["full"]["lr"] != per_method["lora"]["lr"]
    assert results["shared"]["max_steps"] == 3 and results["shared"]["final_eval_limit"] == FINAL_N


def test_failures_are_recorded_and_do_not_stop_the_others(compared):
    settings, _, results = compared
    rows = _rows(results)
    assert rows["boom"]["status"] == "failed"
    assert "out of memory" in rows["boom"]["error"] and "simulated" in rows["boom"]["error"]
    assert rows["killed"]["status"] == "failed" and "SIGKILL" in rows["killed"]["error"]
    assert rows["boom"]["accuracy"] is None
    md = (settings.output / "report.md").read_text(encoding="utf-8")
    html = (settings.output / "report.html").read_text(encoding="utf-8")
    table = _md_table(md)
    assert table["boom"]["accuracy"].startswith("FAILED: out of memory")
    assert "killed failed: killed by SIGKILL" in md
    assert 'class="failed"' in html and "killed by SIGKILL" in html
    with (settings.output / "results.csv").open(encoding="utf-8") as handle:
        csv_rows = {r["method"]: r for r in csv.DictReader(handle)}
    assert csv_rows["killed"]["status"] == "failed" and "SIGKILL" in csv_rows["killed"]["error"]


def test_report_numbers_equal_results_json(compared):
    settings, _, results = compared
    md = (settings.output / "report.md").read_text(encoding="utf-8")
    html = (settings.output / "report.html").read_text(encoding="utf-8")
    table = _md_table(md)
    for r in results["rows"]:
        if r["status"] != "ok":
            continue
        cells = table[r["method"]]
        assert cells["accuracy"] == f"{r['accuracy'] * 100:.1f}%"
        assert cells["95% CI"] == f"{r['ci95_low'] * 100:.1f}–{r['ci95_high'] * 100:.1f}"
        assert cells["majority baseline"] == f"{r['majority_baseline'] * 100:.1f}%"
        assert cells["acc − baseline (pts)"] == f"{r['accuracy_minus_baseline'] * 100:+.1f}"
        assert cells["letter TV"] == f"{r['letter_tv_distance']:.2f}"
        assert cells["peak memory"] == f"{r['peak_memory_bytes'] / 2**20:.0f} MiB"
        assert cells["eval q/s"] == f"{r['eval_questions_per_second']:.1f}"
        assert cells["perm. accuracy"] == f"{r['permutation_accuracy'] * 100:.1f}%"
        # The HTML row shows exactly the Markdown row's cells.
        html_row = re.search(rf"<tr[^>]*><td>{re.escape(r['method'])}</td>(.*?)</tr>", html)
        assert html_row, r["method"]
        html_cells = re.findall(r"<td>(.*?)</td>", html_row.group(1))
        assert html_cells == list(cells.values())[1:]
    with (settings.output / "results.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            ref = _rows(results)[row["method"]]
            if ref["accuracy"] is not None:
                assert float(row["accuracy"]) == ref["accuracy"]
                assert int(row["peak_memory_bytes"]) == ref["peak_memory_bytes"]
    trained = [r for r in results["rows"] if r["status"] == "ok" and r["method"] != ZERO_SHOT]
    best = max(trained, key=lambda r: (r["accuracy"], -r["train_seconds"]))
    assert f"Best accuracy: **{best['method']}** {best['accuracy'] * 100:.1f}%" in md
    assert f"Best accuracy: <strong>{best['method']}</strong> {best['accuracy'] * 100:.1f}%" in html


def test_html_is_self_contained_and_describes_the_run(compared):
    settings, _, results = compared
    html = (settings.output / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == len(PLOT_FILES)
    assert "<script" not in html and "<link" not in html and "http://" not in html and "https://" not in html
    assert "mcqtune compare --methods full,lora,boom,killed (test)" in html
    for needle in ("torch", "transformers", "peft", "torch_threads", "cpu", "Reading of the results"):
        assert needle in html
    assert results["machine"]["torch_threads"] >= 1


def test_run_directories_stay_usable_by_eval(compared, capsys):
    from mcqtune.cli.main import main

    settings, _, _ = compared
    run = settings.output / "runs" / "lora"
    assert main(["eval", "--adapter", str(run), "--data", "arc_easy", "--limit", "4"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_resume_skips_finished_methods_and_retries_failed_ones(compared, capsys):
    settings, _, first = compared
    runs = settings.output / "runs"
    before = {m: (runs / m / RUN_RECORD).stat().st_mtime_ns for m in (ZERO_SHOT, "full")}
    # lora finished training but its worker died before writing the compare record: the trained
    # artifact is reused (its weights file is not rewritten), only the record is written again.
    (runs / "lora" / RUN_RECORD).unlink()
    lora_weights = sorted((runs / "lora" / "adapter").glob("*.safetensors"))
    weights_before = {p: p.stat().st_mtime_ns for p in lora_weights}
    capsys.readouterr()
    again = run_compare(_settings(settings.output.parent, Path(settings.overrides["model"]), resume=True))
    out = capsys.readouterr().out
    for name in (ZERO_SHOT, "full"):
        assert f"{name}: already finished" in out
        assert (runs / name / RUN_RECORD).stat().st_mtime_ns == before[name]
    assert lora_weights and {p: p.stat().st_mtime_ns for p in lora_weights} == weights_before
    assert (runs / "lora" / RUN_RECORD).is_file()
    assert "boom: training" in out and "killed: training" in out
    second = {r["method"]: r for r in again.rows}
    for r in first["rows"]:
        if r["status"] == "ok":
            assert second[r["method"]]["accuracy"] == r["accuracy"]
    assert second["killed"]["status"] == "failed"


# ------------------------------------------------------------------------------------------- units
def _row(method, acc, low, high, **extra):
    row = {
        "method": method,
        "status": "ok",
        "error": None,
        "accuracy": acc,
        "ci95_low": low,
        "ci95_high": high,
        "majority_baseline": 0.27,
        "accuracy_minus_baseline": round(acc - 0.27, 4),
        "predicted_letter_distribution": {"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25},
        "gold_letter_distribution": {"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25},
        "letter_tv_distance": 0.0,
        "permutation_accuracy": None,
        "trainable_params": 0,
        "trainable_percent": 0.0,
        "artifact_bytes": 0,
        "train_seconds": 0.0,
        "train_tokens_per_second": None,
        "peak_memory_bytes": 2**30,
        "eval_questions_per_second": 10.0,
        "n_eval": 500,
        "scoring": "cloze",
        "objective": "ranking",
        "learning_curve": [],
    }
    return row | extra


def _synthetic():
    return {
        "shared": {"train": "arc_easy", "validation": "arc_easy", "max_steps": 150, "batch_size": 4},
        "examples_seen": 600,
        "methods": ["full", "lora", "prefix"],
        "rows": [
            _row(ZERO_SHOT, 0.40, 0.36, 0.44),
            _row("full", 0.60, 0.56, 0.64, trainable_params=134_000_000, train_seconds=600.0,
                 peak_memory_bytes=3 * 2**30),
            _row("lora", 0.58, 0.54, 0.62, trainable_params=4_000_000, train_seconds=200.0,
                 peak_memory_bytes=2 * 2**30),
            _row("prefix", 0.45, 0.41, 0.49, trainable_params=50_000, train_seconds=150.0,
                 peak_memory_bytes=int(1.9 * 2**30),
                 predicted_letter_distribution={"A": 0.7, "B": 0.1, "C": 0.1, "D": 0.1},
                 letter_tv_distance=0.45),
            {**_row("qlora", 0.0, 0.0, 0.0), "status": "failed", "error": "killed by SIGKILL",
             "accuracy": None},
        ],
    }  # fmt: skip


def test_reading_is_computed_from_the_numbers():
    lines = reading_of_results(_synthetic())
    text = "\n".join(lines)
    assert "Best accuracy: **full** 60.0% (95% CI 56.0–64.0, n=500), +20.0 points over zero-shot" in text
    assert "Within the best's 95% CI (overlapping intervals, not distinguishable at n=500): lora" in text
    assert "clearly behind it: prefix" in text
    assert "clearly better than zero-shot (CIs do not overlap): full, lora" in text
    assert "not distinguishable from zero-shot: prefix" in text
    # lora: +18 points per 2 GiB = 9/GiB beats full's 20/3 = 6.7/GiB; lora is the cheapest tie.
    assert "per GiB of peak memory: **lora** (9.00 points per GiB" in text
    cheapest = "cheapest method within the best's CI that scores above zero-shot: **lora**"
    assert f"{cheapest} (2048 MiB vs 3072 MiB" in text
    assert "per minute of training: **lora** (5.40 points per minute" in text
    assert "per million trainable parameters: **prefix** (100 points per million" in text
    assert "prefix answers A 70% of the time (gold 25%, TV 0.45)" in text
    assert "qlora failed: killed by SIGKILL." in text


def test_reading_ties_follow_the_paired_test_where_there_is_one():
    """lora's CI overlaps the best's, but the paired test on the same questions says it differs: it is
    behind the best, and not offered as the cheapest method tied with it."""
    results = _synthetic()
    rows = {r["method"]: r for r in results["rows"]}
    rows["full"]["is_best"] = True
    for name, significant in ((ZERO_SHOT, True), ("lora", True), ("prefix", False)):
        rows[name]["vs_best"] = {"significant": significant, "runs": 1, "n": 500, "family": 3, "verdict": ""}
    text = "\n".join(reading_of_results(results))
    assert "Not shown to differ from the best by the paired test (Holm, 5%): prefix; behind it: lora." in text
    assert "Within the best's 95% CI" not in text
    # Memory: lora is cheaper than full but differs from it; prefix (tied by the test) is cheaper still.
    tie = "cheapest method not shown to differ from the best by the paired test that scores above zero-shot"
    assert f"{tie}: **prefix**" in text
    rows["prefix"]["vs_best"]["significant"] = True
    text = "\n".join(reading_of_results(results))
    assert "paired test (Holm, 5%): none; behind it: lora, prefix." in text
    assert "no other method is tied with the best, full" in text


def test_reading_when_nothing_beats_zero_shot_or_everything_failed():
    results = _synthetic()
    for r in results["rows"][1:4]:
        r.update(accuracy=0.30, ci95_low=0.26, ci95_high=0.34)
    text = "\n".join(reading_of_results(results))
    assert "no method beat zero-shot" in text and "worse than zero-shot" in text
    results["rows"] = [results["rows"][0], results["rows"][4]]
    text = "\n".join(reading_of_results(results))
    assert "No method finished training" in text


def test_reports_and_plots_survive_failed_and_partial_runs(tmp_path):
    results = _synthetic() | {"complete": False}
    failed_only = {**results, "rows": [results["rows"][4]]}
    for case in (results, failed_only):
        plots = write_plots(tmp_path, case["rows"], case)
        assert [p.name for p in plots] == list(PLOT_FILES)
        html = html_report(case, plots)
        assert "Partial results" in html
        assert "Partial results" in markdown_report(case)


def test_table_cells_of_a_failed_row():
    cells = table_cells({"method": "qlora", "status": "failed", "error": "a | b"})
    assert cells[0] == "qlora" and cells[1] == "FAILED: a / b"
    assert set(cells[2:]) == {DASH} and len(cells) == len(TABLE_HEADER)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1234.5, "1,234"), (12.345, "12.3"), (5.4, "5.40"), (0.01234, "0.0123"), (0, "0")],
)
def test_fmt_number_never_uses_exponents(value, expected):
    assert fmt_number(value) == expected


def test_parse_methods_and_default_order():
    assert parse_methods(None) is None and parse_methods("all") is None
    assert parse_methods(" full, lora,zero-shot,lora") == ["full", "lora"]
    order = default_methods()
    assert set(order) == {name for name, method in METHODS.items() if method.preset_of is None}
    assert {"lora", "prompt_tuning", "ln_tuning"} <= set(order) and "dora" not in order  # presets on request
    canonical = [m for m in ("full", "subset", "adapter", "prefix", "lora", "qlora") if m in METHODS]
    assert [m for m in order if m in canonical] == canonical
    ranks = [(METHODS[m].compare_order, m) for m in order]  # the order is the methods' own
    assert ranks == sorted(ranks)


def test_plan_gives_every_method_the_same_budget(tmp_path):
    settings = CompareSettings(output=tmp_path, methods=["full", "lora"], quick=True)
    plan = plan_configs(settings)
    full, lora = plan["configs"]["full"], plan["configs"]["lora"]
    for key in ("max_steps", "batch_size", "seed", "eval_limit", "final_eval_limit", "train", "validation"):
        assert getattr(full, key) == getattr(lora, key) == getattr(plan["zero_shot"], key)
    assert full.max_steps == QUICK_BUDGET["max_steps"]
    assert full.final_eval_limit == QUICK_BUDGET["final_eval_limit"]
    assert full.objective == "ranking" and full.train == "arc_easy"
    assert full.lr != lora.lr  # per-method defaults survive
    assert full.save_steps is None
    assert full.output.endswith("runs/full")


def test_plan_precedence_budget_then_config_then_flags(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("max_steps: 7\nseed: 3\nbatch_size: 2\n", encoding="utf-8")
    settings = CompareSettings(
        output=tmp_path, methods=["lora"], config_file=str(config), overrides={"max_steps": 5}
    )
    lora = plan_configs(settings)["configs"]["lora"]
    assert (lora.max_steps, lora.seed, lora.batch_size) == (5, 3, 2)
    assert lora.final_eval_limit is None  # default budget: the whole validation split


def test_plan_rejects_unknown_methods_and_unlabelled_data(tmp_path):
    with pytest.raises(ConfigError, match="unknown method"):
        plan_configs(CompareSettings(output=tmp_path, methods=["lora", "nope"]))
    data = tmp_path / "mine.jsonl"
    data.write_text("{}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="--validation"):
        plan_configs(CompareSettings(output=tmp_path, methods=["lora"], overrides={"train": str(data)}))


def test_cli_compare_help_and_user_errors(tmp_path, capsys):
    from mcqtune.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--help"])
    assert exit_info.value.code == 0
    assert "--resume" in capsys.readouterr().out
    assert main(["compare", "--output", str(tmp_path / "x"), "--methods", "lora,nope"]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_letter_compare_reports_cyclic_permutations_by_default():
    from mcqtune.cli.compare import permutations_for as _compare_permutations

    assert _compare_permutations(None, "letter") == "cyclic"  # letter scoring depends on option order
    assert _compare_permutations(None, "ranking") is None  # cloze is order-free
    assert _compare_permutations("none", "letter") is None
    assert _compare_permutations("3", "ranking") == "3"


def test_cloze_rows_permutation_accuracy_is_their_accuracy(compared):
    """The fixture scores cyclic permutations: under cloze scoring they must not change a single answer."""
    _, _, results = compared
    ok = [r for r in results["rows"] if r["status"] == "ok"]
    assert ok and all(r["scoring"] == "cloze" for r in ok)
    for row in ok:
        assert row["permutation_accuracy"] == pytest.approx(row["accuracy"], abs=1e-9), row["method"]
