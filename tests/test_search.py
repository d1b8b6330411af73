"""`mcqtune search` on the tiny model (issue 26): a study of 6 trials topped up to 8 by the same command,
each method's best YAML trains as is, two processes split one study's trials, a pruned and a failed trial
are recorded as such, `compare --from-search` trains the best settings with seeds; the search spaces are
checked with errors naming file and key. One slow test runs `--quick` on the real bundled model."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from mcqtune.cli.main import main
from mcqtune.compare.plan import CompareSettings
from mcqtune.compare.runner import run_compare
from mcqtune.config import ConfigError, build_config
from mcqtune.search.space import load_spaces
from mcqtune.search.study import make_pruner, open_storage, pruner_spec, reporting_hook, trial_link

DEV_N = 8
STEPS = 4  # checks at step 2 (may prune) and step 4 (the end)
# The tiny model's layers are 32 and 64 wide: LoRA's ranks and the adapter's bottleneck shipped for the
# real model (up to 64 and 128) do not fit it, so the tests narrow them with --space.
TINY_SPACE = (
    "lora:\n  r: {type: int, low: 2, high: 8, log: true}\n  alpha: {type: int, low: 2, high: 16}\n"
    "adapter:\n  bottleneck: {type: int, low: 2, high: 32, log: true}\n"
)


def _args(tiny_model_dir: Path, out: Path, storage: str, study: str, trials: int, methods: str) -> list[str]:
    space = out.parent / f"{out.name}-space.yaml"
    space.parent.mkdir(parents=True, exist_ok=True)
    if not space.exists():
        space.write_text(TINY_SPACE)
    return [
        "search",
        "--output", str(out),
        "--methods", methods,
        "--trials", str(trials),
        "--storage", storage,
        "--study", study,
        "--model", str(tiny_model_dir),
        "--max-steps", str(STEPS),
        "--batch-size", "2",
        "--eval-steps", "2",
        "--eval-limit", "4",
        "--final-eval-limit", "8",
        "--train-limit", "40",
        "--dev-size", str(DEV_N),
        "--space", str(space),
        "--quiet",
    ]  # fmt: skip


def _study(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_model_dir):
    """`search --methods lora,adapter --trials 6 --storage sqlite:///s.db --study x`, then `--trials 8`."""
    tmp = tmp_path_factory.mktemp("search")
    out, storage = tmp / "out", f"sqlite:///{tmp / 's.db'}"
    logs = []
    for trials in (6, 8):  # in this process (its imports are paid once); the trials run in workers
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as mp:
            mp.setenv("OMP_NUM_THREADS", "1")
            code = main(_args(tiny_model_dir, out, storage, "x", trials, "lora,adapter"))
        assert code == 0, printed.getvalue()[-3000:]
        logs.append(printed.getvalue())
        if trials == 6:
            first = {
                m: [t.datetime_start for t in _study(storage, f"x.{m}").trials] for m in ("lora", "adapter")
            }
    return out, storage, logs, first


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}


def test_the_same_command_tops_the_study_up(searched):
    _, storage, logs, first = searched
    studies = {m: _study(storage, f"x.{m}") for m in ("lora", "adapter")}
    assert [len(first["lora"]), len(first["adapter"])] == [3, 3]  # 6 trials, spread evenly
    assert [len(s.trials) for s in studies.values()] == [4, 4]  # topped up to 8, not 8 more
    for m, study in studies.items():  # the first run's trials were continued, not run again
        assert [t.datetime_start for t in study.trials[:3]] == first[m]
    assert "6 trials in all" in logs[0] and "8 trials in all" in logs[1]
    assert logs[1].count("training...") == 2  # the second run started only the 2 missing trials


def test_every_trial_records_time_memory_params_and_a_progress_line(searched):
    _, storage, logs, _ = searched
    for m in ("lora", "adapter"):
        for trial in _study(storage, f"x.{m}").trials:
            assert trial.state in (TrialState.COMPLETE, TrialState.PRUNED), trial.user_attrs
            attrs = trial.user_attrs
            assert attrs["method"] == m and attrs["wall_seconds"] > 0 and attrs["peak_memory_bytes"] > 0
            assert sorted(trial.intermediate_values)[0] == 2  # dev accuracy reported at the first check
            if trial.state == TrialState.COMPLETE:
                assert attrs["trainable_params"] > 0 and 0 <= trial.value <= 1
                assert sorted(trial.intermediate_values) == [2, 4]
                metrics = json.loads((Path(attrs["run_dir"]) / "metrics.json").read_text())
                assert (
                    metrics["validation"]["n"] == DEV_N and metrics["validation"]["accuracy"] == trial.value
                )
                assert metrics["data"]["train"].endswith("dev_train.jsonl")
                # no step-0 check: the untrained model's dev score is the same in every trial
                checks = [h["step"] for h in metrics["history"] if "val_accuracy" in h]
                assert checks == [2, 4]
            line = next(
                x
                for x in "".join(logs).splitlines()
                if x.startswith(f"trial {trial.number} [{m}]") and "(" in x and "training..." not in x
            )
            assert "lr=" in line and (" complete (" in line or "pruned at step" in line), line


def test_report_best_yaml_and_plots(searched):
    out, storage, _, _ = searched
    results = json.loads((out / "search.json").read_text())
    for m in ("lora", "adapter"):
        study = _study(storage, f"x.{m}")
        done = [t for t in study.trials if t.state == TrialState.COMPLETE]
        best = max(done, key=lambda t: (t.value, -t.number))
        entry = results["methods"][m]
        assert entry["best"]["number"] == best.number and entry["best"]["dev_accuracy"] == best.value
        saved = yaml.safe_load((out / "best" / f"{m}.yaml").read_text())
        assert saved["method"] == m and saved["lr"] == pytest.approx(best.params["lr"])
        assert saved["train"] == "arc_easy" and saved["validation"] == "arc_easy"  # the user's data, not dev
        options = best.params.get("r"), best.params.get("bottleneck")
        assert options[0] in (None, saved["method_options"].get("r"))
        assert options[1] in (None, saved["method_options"].get("bottleneck"))
        assert (out / "plots" / f"{m}-history.png").stat().st_size > 1000
    front = results["pareto"]
    rows = {(r["method"], r["number"]): r for r in results["trials"]}
    points = [rows[(p["method"], p["number"])] for p in front]
    assert points and all(a["dev_accuracy"] < b["dev_accuracy"] for a, b in itertools.pairwise(points))
    assert (out / "plots" / "pareto.png").is_file()
    md = (out / "report.md").read_text()
    assert "## Best trial per method" in md and "compare --from-search" in md
    assert "Best trial per method" in (out / "report.html").read_text()


def test_each_best_yaml_trains_as_is(searched, capsys):
    out, _, _, _ = searched
    for m in ("lora", "adapter"):
        path = out / "best" / f"{m}.yaml"
        assert main(["train", "--config", str(path), "--quiet"]) == 0, capsys.readouterr().err
        saved = yaml.safe_load(path.read_text())
        metrics = json.loads((Path(saved["output"]) / "metrics.json").read_text())
        assert metrics["method"] == m and metrics["train"]["steps"] == STEPS


def test_compare_from_search_trains_the_best_settings_with_seeds(searched):
    out, _, _, _ = searched
    settings = CompareSettings(output=out.parent / "cmp", from_search=str(out), seeds=2, echo=False)
    run_compare(settings)
    results = json.loads((out.parent / "cmp" / "results.json").read_text())
    for m in ("lora", "adapter"):
        saved = yaml.safe_load((out / "best" / f"{m}.yaml").read_text())
        runs = [r for r in results["runs"] if r["method"] == m]
        assert [r["seed"] for r in runs] == [42, 43] and all(r["lr"] == saved["lr"] for r in runs)
        assert all(r["n_eval"] == saved["final_eval_limit"] for r in runs)  # scored on validation
    assert any("vs_best" in r for r in results["rows"])  # the paired tests against the best
    with pytest.raises(ConfigError, match="drop --config and --tune"):
        run_compare(CompareSettings(output=out.parent / "c2", from_search=str(out), tune="lr"))


def test_compare_from_search_without_a_search_is_a_clear_error(tmp_path, capsys):
    code = main(["compare", "--output", str(tmp_path / "c"), "--from-search", str(tmp_path / "none")])
    assert code == 2 and "run `mcqtune search --output" in capsys.readouterr().err


def test_two_workers_split_one_study(tmp_path, tiny_model_dir):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mcqtune",
                *_args(tiny_model_dir, tmp_path / f"w{i}", storage, "w", 4, "lora"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    trials = _study(storage, "w.lora").trials
    assert 4 <= len(trials) <= 5  # two workers asking at the same moment may start one more
    assert all(t.state != TrialState.RUNNING for t in trials)
    workers = [t.user_attrs["worker"] for t in trials]
    assert len(set(workers)) == 2  # both worked
    run_dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(run_dirs)) == len(trials)  # no trial ran twice
    for i, output in enumerate(outputs):  # each ran exactly the trials the study credits it with
        started = [line for line in output.splitlines() if line.endswith("training...")]
        assert len(started) == sum(str(tmp_path / f"w{i}") in d for d in run_dirs)


def test_a_bad_trial_is_pruned_and_a_failing_one_is_recorded(tmp_path, tiny_model_dir, capsys):
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    # top_k above the tiny model's 4 layers: the method refuses it; the search must go on.
    (tmp_path / "out-space.yaml").write_text(TINY_SPACE + "subset:\n  top_k: {type: int, low: 6, high: 8}\n")
    # Two finished trials that were perfect at every check: the median pruner stops a worse one at step 2.
    # They count in --trials 5: lora's share of 3 leaves one trial to run, subset runs its 2.
    study = optuna.create_study(study_name="p.lora", storage=storage, direction="maximize")
    for _ in range(2):
        study.add_trial(
            optuna.trial.create_trial(
                value=1.0, intermediate_values={2: 1.0, 4: 1.0}, user_attrs={"method": "lora"}
            )
        )
    args = _args(tiny_model_dir, tmp_path / "out", storage, "p", 5, "lora,subset")
    assert main(args) == 0
    printed = capsys.readouterr().out
    real = [t for t in _study(storage, "p.lora").trials if t.number >= 2]
    assert len(real) == 1 and real[0].state == TrialState.PRUNED
    assert sorted(real[0].intermediate_values) == [2]  # stopped at the first check, never trained on
    assert real[0].user_attrs["wall_seconds"] > 0 and "pruned at step 2" in printed
    failed = _study(storage, "p.subset").trials
    assert len(failed) == 2 and all(t.state == TrialState.FAIL for t in failed)
    assert all("top_k must be between 1 and 4" in t.user_attrs["error"] for t in failed)
    lines = [
        x for x in printed.splitlines() if x.startswith("trial") and "[subset]" in x and "training" not in x
    ]
    assert len(lines) == 2 and all(", failed: " in x and "top_k must be between 1 and 4" in x for x in lines)
    results = json.loads((tmp_path / "out" / "search.json").read_text())
    assert results["methods"]["subset"]["best"] is None and results["methods"]["subset"]["fail"] == 2
    assert "## Failed trials" in (tmp_path / "out" / "report.md").read_text()


def test_the_pruning_hook_reports_each_check_and_stops_a_bad_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 'h.db'}"
    study = optuna.create_study(
        study_name="h",
        storage=open_storage(storage, heartbeat=False),
        direction="maximize",
        pruner=make_pruner("median", 2, 6),
    )
    for value in (0.6, 0.8):
        study.add_trial(
            optuna.trial.create_trial(value=value, intermediate_values={2: value, 4: value, 6: value})
        )
    link = lambda trial: trial_link(storage, "h", trial._trial_id, pruner_spec("median", 2, 6))  # noqa: E731
    good, bad, late = study.ask(), study.ask(), study.ask()
    hook = reporting_hook(link(good), max_steps=6)
    hook(0, {"accuracy": 0.0, "n": 8})  # step 0 (the untrained model) is not reported
    hook(2, {"accuracy": 0.9, "n": 8})  # above the finished trials' median at step 2 (0.7): goes on
    assert _study(storage, "h").trials[2].intermediate_values == {2: 0.9}
    with pytest.raises(optuna.TrialPruned, match=r"pruned at step 2: dev accuracy 50\.0% on 8 rows"):
        reporting_hook(link(bad), max_steps=6)(2, {"accuracy": 0.5, "n": 8})
    reporting_hook(link(late), max_steps=6)(6, {"accuracy": 0.1, "n": 8})  # the last step: finished, kept
    assert _study(storage, "h").trials[4].intermediate_values == {6: 0.1}


def test_search_spaces_are_checked_with_file_and_key(tmp_path):
    spaces = load_spaces(["lora", "adapter", "dora"])
    lora = {p.name: p for p in spaces["lora"].params}
    assert lora["lr"].log and lora["lr"].high / lora["lr"].low >= 100  # wide enough that edges are rare
    assert "preset" in lora and "preset" not in {p.name for p in spaces["dora"].params}
    overrides = spaces["lora"].overrides({"lr": 1e-3, "r": 4, "preset": "dora"})
    assert overrides == {"lr": 1e-3, "method_options": {"use_dora": True, "r": 4}}
    assert build_config({"output": "x", **overrides}).method_options["use_dora"] is True
    cases = {
        "lora:\n  rank: {type: int, low: 2, high: 8}\n": r"space.yaml: lora.rank: 'rank' is neither",
        "lora:\n  r: {type: int, low: 8, high: 2}\n": r"lora.r: 'low' \(8\) must be below 'high' \(2\)",
        "lora:\n  lr: {type: float, low: 0.0, high: 0.1, log: true}\n": r"lora.lr: a log scale needs 'low'",
        "lora:\n  preset: {type: categorical, choices: [lora, houlsby]}\n": r"lora.preset: 'houlsby' is not",
        "lora:\n  r: {type: float, low: 2.5, high: 8.0}\n": r"lora.r: lora option 'r' must be an integer",
        "lora:\n  dropout: {type: uniform, low: 0, high: 1}\n": r"lora.dropout: 'type' must be one of",
        "lroa:\n  lr: {type: float, low: 0.1, high: 1.0}\n": r"space.yaml: top-level keys are method names",
    }
    for text, message in cases.items():
        (tmp_path / "space.yaml").write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_spaces(["lora"], str(tmp_path / "space.yaml"))
    (tmp_path / "space.yaml").write_text("lora:\n  preset: null\n  r: {type: int, low: 4, high: 8}\n")
    custom = {p.name: p for p in load_spaces(["lora"], str(tmp_path / "space.yaml"))["lora"].params}
    assert "preset" not in custom and (custom["r"].low, custom["r"].high) == (4, 8)


@pytest.mark.slow
def test_quick_search_on_the_bundled_model(tmp_path, capsys):
    out = tmp_path / "quick"
    # LoRA's own rank (16), no preset: the one trial's sampled PiSSA at rank 54 took half the test's time
    # in SVD initialisation and a 126 MiB artifact (CI time, issue 28)
    (tmp_path / "space.yaml").write_text("lora:\n  preset: null\n  r: null\n  alpha: null\n")
    args = ["--trials", "1", "--output", str(out), "--space", str(tmp_path / "space.yaml"), "--quiet"]
    args += ["--max-steps", "8", "--batch-size", "4"]  # half --quick's steps at half its batch: CI time
    assert main(["search", "--quick", "--methods", "lora", *args]) == 0
    results = json.loads((out / "search.json").read_text())
    best = results["methods"]["lora"]["best"]
    assert best is not None and 0 <= best["dev_accuracy"] <= 1 and results["dev"]["size"] == 24
    assert (out / "best" / "lora.yaml").is_file() and "trial 0 [lora]" in capsys.readouterr().out


def test_timeout_stops_starting_trials(tmp_path, tiny_model_dir, capsys):
    storage = f"sqlite:///{tmp_path / 't.db'}"
    args = [*_args(tiny_model_dir, tmp_path / "out", storage, "t", 4, "lora"), "--timeout", "0.001"]
    assert main(args) == 0
    assert "--timeout 0.001 s reached; not starting more trials" in capsys.readouterr().out
    assert _study(storage, "t.lora").trials == []
    assert json.loads((tmp_path / "out" / "search.json").read_text())["methods"]["lora"]["best"] is None
