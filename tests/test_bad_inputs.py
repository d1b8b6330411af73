"""Malformed inputs: each one is a one-message user error (exit 2, no traceback) that names the file,
line/row and field where there is one, and leaves the output untouched (docs/RELIABILITY.md).

Every case runs the real CLI entry point (``mcqtune.cli.main``) in-process on the tiny model; a few are
repeated in a subprocess to check what a user really sees on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mcqtune.cli.main import EXIT_USER_ERROR, main

GOOD = {"question": "What is 2+2?", "choices": ["3", "4", "5", "6"], "answer": 1}


@dataclass
class Env:
    tmp: Path
    model: Path  # the tiny model dir
    run: Path  # a finished tiny training run (read-only: copy it before changing it)
    other_model: Path  # a tiny model with another architecture
    out: Path  # the output dir a train case must not create
    metrics: Path  # the --output file an eval case must not create

    def jsonl(self, name: str, rows: list, raw: bytes | None = None) -> Path:
        path = self.tmp / name
        if raw is not None:
            path.write_bytes(raw)
        else:
            text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
            path.write_text(text, encoding="utf-8")
        return path

    def bad_row(self, name: str, row: dict | str) -> Path:
        """A file whose first row is good and whose second row (line 2) is ``row``."""
        return self.jsonl(name, [GOOD, row])

    def text(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text, encoding="utf-8")
        return path

    def train(
        self, *extra: str | Path, data: str | Path | None = None, model: Path | None = None
    ) -> list[str]:
        argv = ["train", "--model", str(model or self.model), "--output", str(self.out), "--quiet"]
        argv += ["--max-steps", "2", "--batch-size", "2", "--train-limit", "8", "--eval-limit", "4"]
        argv += ["--final-eval-limit", "4", "--save-steps", "1"]
        argv += ["--train", str(data)] if data is not None else ["--train", "arc_easy", "--no-validation"]
        return argv + [str(e) for e in extra]

    def eval(self, *extra: str | Path, data: str | Path = "arc_easy") -> list[str]:
        argv = ["eval", "--data", str(data), "--limit", "4", "--output", str(self.metrics)]
        return argv + [str(e) for e in extra]

    def copy_run(self, name: str) -> Path:
        target = self.tmp / name
        shutil.copytree(self.run, target)
        return target


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("bad-inputs") / "run"
    argv = ["train", "--model", str(tiny_model_dir), "--train", "arc_easy", "--validation", "arc_easy"]
    argv += ["--output", str(out), "--max-steps", "2", "--batch-size", "2", "--train-limit", "8"]
    argv += ["--eval-limit", "4", "--final-eval-limit", "4", "--eval-steps", "2", "--quiet"]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, tokenizer) -> Path:
    from conftest import make_tiny_llama

    path = tmp_path_factory.mktemp("other-llama")
    make_tiny_llama(tokenizer, layers=2).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def env(tmp_path, tiny_model_dir, finished_run, other_model_dir) -> Env:
    return Env(
        tmp_path, tiny_model_dir, finished_run, other_model_dir, tmp_path / "out", tmp_path / "metrics.json"
    )


# --------------------------------------------------------------------------------------------- cases
# Each case returns (argv, expected substrings of the error message). The file name, line and field
# are part of the expectations wherever the input has them.

Case = Callable[[Env], tuple[list[str], list[str]]]


def _data_case(filename: str, row: dict | str, line: str, field: str | None) -> Case:
    def make(e: Env):
        path = e.bad_row(filename, row)
        expected = [f"{filename}:{line}"] + ([f"field '{field}'"] if field else [])
        return e.train(data=path), expected

    return make


def _model_dir(e: Env, name: str, keep: Callable[[Path], bool]) -> Path:
    target = e.tmp / name
    shutil.copytree(e.model, target, ignore=lambda d, names: [n for n in names if not keep(Path(d) / n)])
    return target


def _truncated_model(e: Env):
    model = _model_dir(e, "truncated", lambda p: True)
    weights = model / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    return e.train(model=model), ["model.safetensors", "truncated"]


def _garbage_header_model(e: Env):
    model = _model_dir(e, "garbage", lambda p: True)
    with (model / "model.safetensors").open("r+b") as handle:
        handle.write(b"\xff" * 8)
    return e.train(model=model), ["model.safetensors", "corrupt"]


def _pickle_only_model(e: Env):
    model = _model_dir(e, "pickled", lambda p: p.suffix != ".safetensors")
    torch.save({"x": torch.zeros(1)}, model / "pytorch_model.bin")
    return e.train(model=model), ["pickled", "--allow-pickle"]


def _no_config_model(e: Env):
    model = _model_dir(e, "noconfig", lambda p: p.name != "config.json")
    return e.train(model=model), ["no config.json"]


def _yaml(text: str, expected: list[str]) -> Case:
    def make(e: Env):
        path = e.text("run.yaml", text)
        return e.train("--config", path), ["run.yaml", *expected]

    return make


def _adapter_copy(e: Env, name: str, change: Callable[[Path], None]) -> Path:
    run = e.copy_run(name)
    change(run)
    return run


def _corrupt_adapter(e: Env):
    def truncate(run: Path) -> None:
        weights = run / "adapter" / "adapter_model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 3])

    run = _adapter_copy(e, "corrupt-adapter", truncate)
    return e.eval("--adapter", run), ["adapter_model.safetensors", "truncated"]


def _garbage_adapter(e: Env):
    def garbage(run: Path) -> None:
        (run / "adapter" / "adapter_model.safetensors").write_bytes(b"not a safetensors file at all")

    run = _adapter_copy(e, "garbage-adapter", garbage)
    return e.eval("--adapter", run), ["adapter_model.safetensors", "corrupt"]


def _pickle_adapter(e: Env):
    def to_pickle(run: Path) -> None:
        from safetensors.torch import load_file

        weights = run / "adapter" / "adapter_model.safetensors"
        torch.save(load_file(str(weights)), run / "adapter" / "adapter_model.bin")
        weights.unlink()

    run = _adapter_copy(e, "pickle-adapter", to_pickle)
    return e.eval("--adapter", run), ["adapter", "pickled", "--allow-pickle"]


def _unknown_method_adapter(e: Env):
    def rename(run: Path) -> None:
        manifest = json.loads((run / "mcqtune.json").read_text())
        manifest["method"] = "../../evil"
        (run / "mcqtune.json").write_text(json.dumps(manifest))

    run = _adapter_copy(e, "bad-method", rename)
    return e.eval("--adapter", run), ["mcqtune.json", "field 'method'", "unknown method"]


def _corrupt_manifest(e: Env):
    run = _adapter_copy(e, "bad-manifest", lambda r: (r / "mcqtune.json").write_text('{"method": "lo'))
    return e.eval("--adapter", run), ["mcqtune.json", "corrupt manifest"]


def _no_manifest(e: Env):
    run = _adapter_copy(e, "no-manifest", lambda r: (r / "mcqtune.json").unlink())
    return e.eval("--adapter", run), ["no-manifest", "mcqtune.json"]


def _other_base(e: Env):
    return e.eval("--adapter", e.run, "--model", e.other_model), ["trained on base model", "--model"]


def _finished_output(e: Env):
    e.out = e.copy_run("finished")
    return e.train(), ["finished run", "--overwrite"]


def _output_is_file(e: Env):
    e.out = e.text("out.txt", "my notes")
    return e.train(), ["out.txt", "not a directory"]


def _output_parent_is_file(e: Env):
    parent = e.text("parent.txt", "")
    e.out = parent / "run"
    return e.train(), ["parent.txt", "is a file"]


def _output_unwritable(e: Env):
    if os.geteuid() == 0:
        pytest.skip("root can write into a read-only directory; see the monkeypatched variant")
    locked = e.tmp / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    e.out = locked / "run"
    return e.train(), ["locked", "cannot write"]


CASES: dict[str, Case] = {
    # ---- data files: encoding, syntax, schema, values
    "empty file": lambda e: (e.train(data=e.jsonl("empty.jsonl", [], b"")), ["empty.jsonl", "empty"]),
    "only blank lines": lambda e: (
        e.train(data=e.jsonl("blank.jsonl", [], b"\n  \n\n")),
        ["blank.jsonl", "no JSON object"],
    ),
    "latin-1 encoding": lambda e: (
        e.train(
            data=e.jsonl(
                "latin1.jsonl",
                [],
                (
                    json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "question": "café?"}, ensure_ascii=False)
                ).encode("latin-1"),
            )
        ),
        ["latin1.jsonl:2", "not valid UTF-8"],
    ),
    "utf-16 encoding": lambda e: (
        e.train(data=e.jsonl("utf16.jsonl", [], (json.dumps(GOOD) + "\n").encode("utf-16"))),
        ["utf16.jsonl:1", "not valid UTF-8"],
    ),
    "invalid JSON line": _data_case("badjson.jsonl", '{"question": "x", "choices": [', "2", None),
    "one JSON array": lambda e: (
        e.train(data=e.jsonl("array.jsonl", [], json.dumps([GOOD, GOOD]).encode())),
        ["array.jsonl:1", "JSON array"],
    ),
    "line is not an object": _data_case("list.jsonl", "[1, 2, 3]", "2", None),
    "missing answer field": _data_case(
        "noanswer.jsonl", {"question": "q", "choices": ["a", "b"]}, "2", "answer"
    ),
    "missing question field": _data_case(
        "noquestion.jsonl", {"choices": ["a", "b"], "answer": 0}, "2", "question"
    ),
    "answer index out of range": _data_case("range.jsonl", {**GOOD, "answer": 4}, "2", "answer"),
    "negative answer index": _data_case("negative.jsonl", {**GOOD, "answer": -1}, "2", "answer"),
    "letter not among options": _data_case("letter.jsonl", {**GOOD, "answer": "E"}, "2", "answer"),
    "empty question": _data_case("emptyq.jsonl", {**GOOD, "question": "   "}, "2", "question"),
    "1 option": _data_case("one.jsonl", {**GOOD, "choices": ["4"], "answer": 0}, "2", "choices"),
    "27 options": _data_case(
        "many.jsonl", {**GOOD, "choices": [f"o{i}" for i in range(27)], "answer": 0}, "2", "choices"
    ),
    "NaN answer": _data_case(
        "nan.jsonl", '{"question": "q", "choices": ["a", "b"], "answer": NaN}', "2", "answer"
    ),
    "None answer": _data_case("nullanswer.jsonl", {**GOOD, "answer": None}, "2", "answer"),
    "None question": _data_case("nullq.jsonl", {**GOOD, "question": None}, "2", "question"),
    "None option": _data_case("nullopt.jsonl", {**GOOD, "choices": ["a", None, "c"]}, "2", "choices"),
    "empty option": _data_case("emptyopt.jsonl", {**GOOD, "choices": ["a", "", "c"]}, "2", "choices"),
    "choices not a list": _data_case("strchoices.jsonl", {**GOOD, "choices": "a,b,c"}, "2", "choices"),
    "float answer": _data_case("float.jsonl", {**GOOD, "answer": 1.5}, "2", "answer"),
    "boolean answer": _data_case("bool.jsonl", {**GOOD, "answer": True}, "2", "answer"),
    "CSV ragged row": lambda e: (
        e.train(data=e.jsonl("ragged.csv", [], b"question,A,B,C,D,answer\nq1,a,b,c,d,A\nq2,a,b,c\n")),
        ["ragged.csv:3", "cells"],
    ),
    "CSV unknown columns": lambda e: (
        e.train(data=e.jsonl("cols.csv", [], b"text,opt1,opt2\nq1,a,b\n")),
        ["cols.csv", "--format"],
    ),
    "directory instead of a file": lambda e: (e.train(data=e.tmp), [str(e.tmp), "directory"]),
    "file does not exist": lambda e: (e.train(data=e.tmp / "nope.jsonl"), ["nope.jsonl"]),
    "bad validation file": lambda e: (
        e.train(
            "--validation", e.bad_row("val.jsonl", {**GOOD, "answer": 9}), data=e.bad_row("tr.jsonl", GOOD)
        ),
        ["val.jsonl:2", "field 'answer'"],
    ),
    "every row bad with --on-bad-rows skip": lambda e: (
        e.train("--on-bad-rows", "skip", data=e.jsonl("allbad.jsonl", [{**GOOD, "answer": 7}] * 3)),
        ["allbad.jsonl", "no usable rows"],
    ),
    "wrong --format for the file": lambda e: (
        e.train("--format", "arc", data=e.bad_row("generic.jsonl", GOOD)),
        ["generic.jsonl", "field 'answerKey'", "first row"],
    ),
    "unknown --format": lambda e: (e.train("--format", "xml"), ["--format", "xml"]),
    # ---- config file and flags
    "config: unknown key": _yaml("learning_rate: 0.1\n", ["'learning_rate'", "unknown key"]),
    "config: wrong type": _yaml("batch_size: four\n", ["'batch_size'", "integer"]),
    "config: not a mapping": _yaml("- lr\n- 0.1\n", ["mapping"]),
    "config: YAML syntax error": _yaml("lr: [1\n", ["not valid YAML"]),
    "config: NaN epochs": _yaml("epochs: .nan\nmax_steps: null\n", ["'epochs'", "nan"]),
    "config: bad prompt key": _yaml("prompt:\n  max_len: 5\n", ["'prompt'", "max_len"]),
    "config: is a directory": lambda e: (e.train("--config", e.tmp), ["directory"]),
    "config: does not exist": lambda e: (
        e.train("--config", e.tmp / "none.yaml"),
        ["none.yaml", "not found"],
    ),
    "--max-steps 0": lambda e: (e.train("--max-steps", "0"), ["--max-steps must be a positive integer"]),
    "--max-steps -3": lambda e: (e.train("--max-steps", "-3"), ["--max-steps", "-3"]),
    "--batch-size 0": lambda e: (e.train("--batch-size", "0"), ["--batch-size", "positive"]),
    "--grad-accum -1": lambda e: (e.train("--grad-accum", "-1"), ["--grad-accum", "positive"]),
    "--eval-steps 0": lambda e: (e.train("--eval-steps", "0"), ["--eval-steps"]),
    "--save-steps 0": lambda e: (e.train("--save-steps", "0"), ["--save-steps", "positive"]),
    "--keep-checkpoints 0": lambda e: (e.train("--keep-checkpoints", "0"), ["--keep-checkpoints"]),
    "--lr nan": lambda e: (e.train("--lr", "nan"), ["--lr", "nan"]),
    "--lr negative": lambda e: (e.train("--lr", "-0.1"), ["--lr", "positive"]),
    "--warmup-ratio 1.5": lambda e: (e.train("--warmup-ratio", "1.5"), ["--warmup-ratio"]),
    "--max-length 0": lambda e: (e.train("--max-length", "0"), ["--max-length must be a positive integer"]),
    "unknown method": lambda e: (e.train("--method", "nope"), ["unknown method 'nope'"]),
    "method name that is a path": lambda e: (
        e.train("--method", "../../evil"),
        ["unknown method '../../evil'"],
    ),
    "--resume with --overwrite": lambda e: (e.train("--resume", "--overwrite"), ["--resume", "--overwrite"]),
    "method option of the wrong type": lambda e: (
        e.train("--option", "r=abc"),
        ["lora option 'r' must be an integer"],
    ),
    "method option naming no module": lambda e: (
        e.train("--option", "target_modules=not_a_layer"),
        ["method 'lora'", "not_a_layer"],
    ),
    "--option without =": lambda e: (e.train("--option", "r8"), ["KEY=VALUE", "r8"]),
    # ---- models
    "model does not exist": lambda e: (
        e.train(model=e.tmp / "no-model"),
        ["no-model", "not found"],
    ),
    "model dir without config.json": _no_config_model,
    "model with only pickled weights": _pickle_only_model,
    "truncated model.safetensors": _truncated_model,
    "model.safetensors with a garbage header": _garbage_header_model,
    # ---- output directory
    "output is an existing file": _output_is_file,
    "output's parent is a file": _output_parent_is_file,
    "output not writable (chmod)": _output_unwritable,
    "output holds a finished run": _finished_output,
    "--resume with nothing to resume": lambda e: (e.train("--resume"), ["--resume", "no checkpoint"]),
    # ---- adapters, eval and predict
    "adapter for another base model": _other_base,
    "adapter: truncated safetensors": _corrupt_adapter,
    "adapter: garbage safetensors": _garbage_adapter,
    "adapter: only pickled weights": _pickle_adapter,
    "adapter: unknown method name": _unknown_method_adapter,
    "adapter: corrupt manifest": _corrupt_manifest,
    "adapter: no manifest": _no_manifest,
    "adapter: a file, not a run dir": lambda e: (
        e.eval("--adapter", e.text("adapter.safetensors", "x")),
        ["adapter.safetensors", "is a file"],
    ),
    "eval: --output is a directory": lambda e: (
        ["eval", "--data", "arc_easy", "--model", str(e.model), "--output", str(e.tmp)],
        [str(e.tmp), "is a directory"],
    ),
    "eval: --limit 0": lambda e: (e.eval("--model", e.model, "--limit", "0"), ["--limit", "positive"]),
    "eval: bad data row": lambda e: (
        e.eval("--model", e.model, data=e.bad_row("evalbad.jsonl", {**GOOD, "answer": "Z"})),
        ["evalbad.jsonl:2", "field 'answer'"],
    ),
    "predict: one --choice": lambda e: (
        ["predict", "--model", str(e.model), "--question", "Why?", "--choice", "because"],
        ["at least two --choice"],
    ),
    "predict: invalid JSON line": lambda e: (
        ["predict", "--model", str(e.model), "--data", str(e.bad_row("pred.jsonl", "{oops"))],
        ["pred.jsonl:2", "invalid JSON"],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_a_clear_user_error(name, env, capsys):
    argv, expected = CASES[name](env)
    before = _snapshot(env.out)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR, err
    assert "Traceback" not in err
    message = err.split("error: ", 1)[-1]
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert _snapshot(env.out) == before, "the output directory changed"
    assert not env.metrics.exists()


def _snapshot(path: Path) -> dict[str, tuple[int, int]] | None:
    """Every file under ``path`` with its size and mtime (None when the path does not exist)."""
    if not path.exists():
        return None
    if path.is_file():
        return {path.name: (path.stat().st_size, path.stat().st_mtime_ns)}
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def test_the_suite_covers_at_least_30_cases():
    assert len(CASES) >= 30


def test_output_not_writable_even_for_root(env, monkeypatch, capsys):
    """A read-only location (root ignores chmod, so the probe is made to fail as a read-only mount would)."""
    import mcqtune.preflight as preflight

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(preflight.tempfile, "mkstemp", refuse)
    assert main(env.train()) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "cannot write" in err and "Permission denied" in err
    assert not env.out.exists()


def test_not_enough_disk_fails_before_training(env, monkeypatch, capsys):
    import mcqtune.preflight as preflight

    usage = shutil.disk_usage(env.tmp)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: usage._replace(free=100_000))
    assert main(env.train()) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "not enough free disk space" in err and "needs about" in err and "MiB" in err
    assert not env.out.exists()


def test_model_too_big_for_memory_is_refused_with_numbers(env, monkeypatch, capsys):
    import mcqtune.preflight as preflight

    monkeypatch.setattr(preflight, "available_memory", lambda device: 1_000_000)
    assert main(env.train()) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "does not fit in memory" in err and "parameters x 4 bytes" in err and "MiB" in err
    assert not env.out.exists()


def test_optimizer_state_too_big_for_memory_is_refused(env, monkeypatch, capsys):
    """The weights fit but gradients + Adam moments of the trainable parameters do not (full fine-tune)."""
    import mcqtune.preflight as preflight

    calls = iter([10 * 2**30, 100_000])  # before loading: plenty; after loading: nearly nothing
    monkeypatch.setattr(preflight, "available_memory", lambda device: next(calls))
    assert main(env.train()) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "training does not fit in memory" in err and "optimizer state" in err
    assert not env.out.exists()


# ------------------------------------------------------------------------- partly bad data: skip policy


def test_skip_policy_trains_on_good_rows_and_reports_the_count(env, capsys):
    rows = [GOOD, {**GOOD, "answer": 9}, {**GOOD, "id": "x2"}, {**GOOD, "question": ""}, {**GOOD, "id": "x3"}]
    data = env.jsonl("partly.jsonl", rows)
    assert main(env.train(data=data)) == EXIT_USER_ERROR  # default policy: error, listing both rows
    err = capsys.readouterr().err
    assert "2 bad rows" in err and "partly.jsonl:2" in err and "partly.jsonl:4" in err
    assert not env.out.exists()
    assert main(env.train("--on-bad-rows", "skip", data=data)) == 0
    metrics = json.loads((env.out / "metrics.json").read_text())
    assert metrics["bad_rows_skipped"] == {"train": 2, "validation": 0}


def test_duplicate_options_and_extra_fields_are_accepted(env, capsys):
    """Documented policy: duplicate options are a warning (upstream benchmarks have them), and fields
    the format does not use (explanations, topics) are ignored."""
    rows = [GOOD, {**GOOD, "choices": ["4", "4", "5", "6"]}, {**GOOD, "explanation": "2+2", "topic": "math"}]
    assert main(["data", "check", str(env.jsonl("dup.jsonl", rows)), "--no-tokens"]) == 0
    out = capsys.readouterr().out
    assert "duplicate options" in out


# ------------------------------------------------------------------------- what a user sees, for real

# in a real process: an error found reading the config and one found loading an artifact (the data
# errors take the same path to stderr; in-process above, every case)
SUBPROCESS_CASES = ["config: unknown key", "adapter: truncated safetensors"]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_real_cli_prints_one_message_and_exits_2(name, env):
    argv, expected = CASES[name](env)
    result = subprocess.run(
        [sys.executable, "-m", "mcqtune", *argv], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == EXIT_USER_ERROR, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") or "\nerror: " in result.stderr
    for fragment in expected:
        assert fragment in result.stderr
    assert not env.out.exists() and not env.metrics.exists()
