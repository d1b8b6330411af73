"""`mcqtune serve` on the tiny model: answers equal `mcqtune predict`, concurrent requests share a
forward pass, every bad request gets a 4xx that says why (and the server keeps serving), API keys,
lazily loaded artifacts from --adapter-dir, and a bounded load test on a real loopback server."""

from __future__ import annotations

import base64
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mcqtune.cli.main import main
from mcqtune.errors import ArtifactError, ConfigError
from mcqtune.serving.app import ServeSettings, create_app
from mcqtune.serving.engine import open_engine
from mcqtune.serving.loadgen import run_load, running_server
from mcqtune.serving.registry import ArtifactRegistry

QUESTION = {"question": "Which is a planet?", "choices": ["Mars", "the Sun", "the Moon"]}


def _train(model_dir: Path, out: Path, method: str, objective: str, *extra: str) -> Path:
    code = main(
        [
            "train",
            "--model",
            str(model_dir),
            "--method",
            method,
            "--train",
            "arc_easy",
            "--validation",
            "arc_easy",
            "--objective",
            objective,
            "--output",
            str(out),
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--train-limit",
            "4",
            "--eval-limit",
            "4",
            "--final-eval-limit",
            "4",
            "--eval-steps",
            "2",
            "--quiet",
            *extra,
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """Artifacts in one directory (also the --adapter-dir): two LoRA (letter; the second trained hard
    so that its answers differ) and a subset (cloze)."""
    root = tmp_path_factory.mktemp("serve-runs")
    return {
        "lora": _train(tiny_model_dir, root / "lora", "lora", "letter"),
        "lora2": _train(tiny_model_dir, root / "lora2", "lora", "letter", "--lr", "0.05", "--seed", "7"),
        "subset": _train(tiny_model_dir, root / "subset", "subset", "ranking", "--top-k", "2"),
    }


@pytest.fixture()
def engine(tiny_model_dir):
    """A fresh engine (artifact names are unique per engine); the tiny base loads in well under a second."""
    return open_engine(str(tiny_model_dir), "fp32", batch_size=16)


def _client(engine, named=None, adapter_dir=None, max_loaded=4, **settings) -> TestClient:
    registry = ArtifactRegistry(engine, named or {}, adapter_dir, max_loaded)
    registry.load_named()
    return TestClient(create_app(registry, ServeSettings(**settings)))


@pytest.fixture(scope="module")
def client(tiny_model_dir, runs):
    with _client(open_engine(str(tiny_model_dir), "fp32", 16), runs, window_ms=50.0) as test_client:
        yield test_client


def _predict_json(capsys, model_dir: Path, adapter: Path | None) -> dict:
    argv = ["predict", "--model", str(model_dir), "--precision", "fp32", "--json"]
    argv += ["--adapter", str(adapter)] if adapter else []
    argv += ["--question", QUESTION["question"]]
    for choice in QUESTION["choices"]:
        argv += ["--choice", choice]
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("name", [None, "lora", "subset"])
def test_answers_equal_mcqtune_predict(client, runs, tiny_model_dir, capsys, name):
    assert_answer_equals_predict(client, tiny_model_dir, capsys, name, runs[name] if name else None)


def test_new_methods_serve_beside_lora_on_one_base(runs, tiny_model_dir, tmp_path, capsys):
    """Prompt tuning, LayerNorm tuning and the DoRA and Houlsby presets answer in ``serve`` beside LoRA,
    on the one base, exactly as ``mcqtune predict`` answers with each alone."""
    named = {"lora": runs["lora"]}
    for method in ("prompt_tuning", "ln_tuning", "dora", "houlsby"):
        named[method] = _train(tiny_model_dir, tmp_path / method, method, "ranking", "--lr", "0.05")
    engine = open_engine(str(tiny_model_dir), "fp32", 16)
    with _client(engine, named) as served:
        for name in [*named, None, *reversed(named)]:
            assert_answer_equals_predict(served, tiny_model_dir, capsys, name, named.get(name))
    assert len(engine.predictor._bases) == 1


def assert_answer_equals_predict(client, model_dir: Path, capsys, name: str | None, run: Path | None) -> None:
    expected = _predict_json(capsys, model_dir, run)
    response = client.post("/v1/answer", json={**QUESTION, "adapter": name})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["letter"] == expected["prediction"]
    assert body["adapter"] == name
    got = {letter: round(p, 4) for letter, p in zip("ABC", body["probabilities"], strict=True)}
    assert got == pytest.approx(expected["probabilities"], abs=1.5e-4)
    assert sum(body["probabilities"]) == pytest.approx(1.0)


def test_concurrent_requests_share_a_forward_pass_with_the_same_answers(client, tiny_model_dir, runs):
    """Eight concurrent requests to a server whose batch holds eight and whose window is a minute: one
    forward pass, sent as soon as the eighth arrives (no timing: the batch fills, whatever the load)."""
    alone = client.post("/v1/answer", json={**QUESTION, "adapter": "lora"}).json()
    questions = [{**QUESTION, "adapter": "lora"}] * 8
    engine = open_engine(str(tiny_model_dir), "fp32", 16)
    with _client(engine, runs, window_ms=60_000.0, max_batch=8) as batching, ThreadPoolExecutor(8) as pool:
        answers = [r.json() for r in pool.map(lambda q: batching.post("/v1/answer", json=q), questions)]
        metrics = batching.get("/metrics").text
    assert [a["batch_size"] for a in answers] == [8] * 8
    for answer in answers:
        assert answer["probabilities"] == pytest.approx(alone["probabilities"], abs=1e-5)
    assert "mcqtune_batch_size_count" in metrics
    assert 'mcqtune_requests_total{path="/v1/answer",status="200"}' in metrics


def test_batch_endpoint_mixes_artifacts(client):
    questions = [{**QUESTION, "adapter": a} for a in (None, "lora", "subset", "lora")]
    response = client.post("/v1/answer/batch", json={"questions": questions})
    assert response.status_code == 200, response.text
    answers = response.json()["answers"]
    assert [a["adapter"] for a in answers] == [None, "lora", "subset", "lora"]
    assert [a["scoring"] for a in answers][1:3] == ["letter", "cloze"]
    assert answers[1]["probabilities"] == pytest.approx(answers[3]["probabilities"], abs=1e-6)


def test_lora_artifacts_share_one_mixed_forward_pass(client):
    engine = client.app.state.registry.engine
    alone = {
        name: client.post("/v1/answer", json={**QUESTION, "adapter": name}).json()["probabilities"]
        for name in (None, "lora", "lora2")
    }
    assert max(abs(a - b) for a, b in zip(alone["lora"], alone["lora2"], strict=True)) > 1e-3
    passes = engine.mixed_passes
    questions = [{**QUESTION, "adapter": name} for name in ("lora2", None, "lora", "lora2", "lora")]
    answers = client.post("/v1/answer/batch", json={"questions": questions}).json()["answers"]
    assert engine.mixed_passes == passes + 1
    for question, answer in zip(questions, answers, strict=True):
        assert answer["probabilities"] == pytest.approx(alone[question["adapter"]], abs=1e-5)


def test_adapters_lists_method_formulation_parameters_and_accuracy(client, runs):
    body = client.get("/v1/adapters").json()
    by_name = {a["name"]: a for a in body["loaded"]}
    assert set(by_name) == {None, "lora", "lora2", "subset"}
    metrics = json.loads((runs["lora"] / "metrics.json").read_text())
    assert by_name["lora"]["validation_accuracy"] == metrics["validation"]["accuracy"]
    assert by_name["lora"]["method"] == "lora" and by_name["lora"]["formulation"] == "letter"
    assert by_name["subset"]["trainable_parameters"] > by_name["lora"]["trainable_parameters"] > 0
    assert by_name[None]["method"] == "zero-shot"


BAD_REQUESTS = [
    ({**QUESTION, "adapter": "nope"}, 404, "unknown artifact 'nope'"),
    ({"question": "q?", "choices": ["only one"]}, 422, "choices: List should have at least 2 items"),
    ({"question": "q?", "choices": [str(i) for i in range(11)]}, 422, "at most 10 items"),
    ({"question": "  ", "choices": ["a", "b"]}, 422, "question: String should have at least 1 character"),
    ({"question": "q?", "choices": ["a", ""]}, 422, "choices.1: String should have at least 1 character"),
    ({"question": 3, "choices": ["a", "b"]}, 422, "question: Input should be a valid string"),
    ({"question": "q?", "choices": "a,b"}, 422, "choices: Input should be a valid list"),
    ({"choices": ["a", "b"]}, 422, "question: Field required"),
    ({**QUESTION, "debias": True}, 400, "no letter prior for 'zero-shot'"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_REQUESTS)
def test_bad_requests_say_what_is_wrong_and_the_server_keeps_serving(client, body, status, message):
    response = client.post("/v1/answer", json=body)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert client.post("/v1/answer", json=QUESTION).status_code == 200


def test_invalid_json_and_oversized_bodies(client):
    response = client.post(
        "/v1/answer", content=b'{"question": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and "invalid JSON" in response.json()["error"]
    huge = {"question": "x" * 70_000, "choices": ["a", "b"]}
    response = client.post("/v1/answer", json=huge)
    assert response.status_code == 413 and "byte limit" in response.json()["error"]

    def chunks():  # no content-length: the limit is counted while reading
        yield b'{"question": "'
        for _ in range(20):
            yield b"y" * 4096
        yield b'", "choices": ["a", "b"]}'

    response = client.post("/v1/answer", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert client.post("/v1/answer", json=QUESTION).status_code == 200


def test_api_key_is_checked_on_every_request_but_healthz(engine):
    with _client(engine, api_key="s3cret") as keyed:
        assert keyed.get("/healthz").status_code == 200
        for path in ("/", "/v1/adapters", "/metrics", "/openapi.json"):
            response = keyed.get(path)
            assert response.status_code == 401 and response.json()["error"] == "missing API key"
        wrong = keyed.post("/v1/answer", json=QUESTION, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "wrong API key"
        assert keyed.post("/v1/answer", json=QUESTION, headers={"X-API-Key": "s3cret"}).status_code == 200
        basic = base64.b64encode(b"anyone:s3cret").decode()
        assert keyed.get("/", headers={"Authorization": f"Basic {basic}"}).status_code == 200


def test_openapi_and_page_are_served(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/answer", "/v1/answer/batch", "/v1/adapters", "/healthz", "/metrics"} <= set(spec["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "<title>mcqtune" in page.text
    assert client.get("/static/app.js").status_code == 200
    examples = client.get("/v1/examples", params={"dataset": "arc_easy", "limit": 3}).json()
    assert len(examples) == 3 and examples[0]["answer"] is not None


def test_adapter_dir_loads_lazily_least_recently_used_first_and_never_outside(engine, runs, tmp_path):
    root = runs["lora"].parent
    outside = tmp_path / "outside"
    shutil.copytree(runs["lora"], outside)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    try:
        with _client(engine, adapter_dir=root, max_loaded=1) as lazy:
            listed = lazy.get("/v1/adapters").json()
            assert listed["available"] == ["lora", "lora2", "subset"]  # the symlink out of DIR is not offered
            assert [a["name"] for a in listed["loaded"]] == [None]
            assert lazy.post("/v1/answer", json={**QUESTION, "adapter": "lora"}).status_code == 200
            assert [a["name"] for a in lazy.get("/v1/adapters").json()["loaded"]] == [None, "lora"]
            assert lazy.post("/v1/answer", json={**QUESTION, "adapter": "subset"}).status_code == 200
            assert [a["name"] for a in lazy.get("/v1/adapters").json()["loaded"]] == [None, "subset"]
            both = [{**QUESTION, "adapter": "lora"}, {**QUESTION, "adapter": "subset"}]
            answers = lazy.post("/v1/answer/batch", json={"questions": both})  # 2 lazy ones, 1 held at once
            assert answers.status_code == 200 and len(answers.json()["answers"]) == 2
            for name in ("escape", "../outside", "..", "lora/../subset"):
                response = lazy.post("/v1/answer", json={**QUESTION, "adapter": name})
                assert response.status_code == 404, name
    finally:
        (root / "escape").unlink()


def test_startup_refuses_other_base_and_names_a_broken_artifact(engine, runs, tmp_path, tokenizer):
    from conftest import make_tiny_llama

    other_base = tmp_path / "other-base"
    make_tiny_llama(tokenizer, layers=2).save_pretrained(other_base, safe_serialization=True)
    tokenizer.save_pretrained(other_base)
    other = _train(other_base, tmp_path / "other", "lora", "letter")
    registry = ArtifactRegistry(engine, {"other": other})
    with pytest.raises(ArtifactError, match=r"artifact 'other'.*trained on base"):
        registry.load_named()
    broken = tmp_path / "broken"
    shutil.copytree(runs["lora"], broken)
    for weights in (broken / "adapter").rglob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    with pytest.raises(ArtifactError, match="artifact 'broken'"):
        ArtifactRegistry(engine, {"broken": broken}).load_named()


def test_cli_refuses_a_public_address_without_a_key(capsys):
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--api-key-file" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--run expects NAME=PATH"):
        from mcqtune.serving.registry import parse_named_paths

        parse_named_paths(["runs/lora"])


def test_cli_refuses_a_prior_for_an_artifact_it_does_not_serve(capsys, tmp_path):
    prior = tmp_path / "prior.json"
    prior.write_text("{}")
    argv = ["serve", "--adapter", f"mine={tmp_path}", "--prior", f"typo={prior}"]
    assert main(argv) == 2  # before any model loads
    err = capsys.readouterr().err
    assert "no artifact named 'typo'" in err and "zero-shot, mine" in err


def test_load_on_a_real_loopback_server_has_no_errors(engine, runs, record_property):
    registry = ArtifactRegistry(engine, runs)
    registry.load_named()
    app = create_app(registry, ServeSettings())
    payloads = [{**QUESTION, "adapter": name} for name in (None, "lora", "subset")]
    with running_server(app) as url:
        result = run_load(f"{url}/v1/answer", payloads, clients=8, total=400)
    print("tiny-model load test:", result.summary())
    for key, value in result.summary().items():  # in the JUnit XML of a CI run (--junitxml)
        record_property(key, value)
    assert result.errors == []
    assert len(result.latencies_ms) == 400
    assert min(result.latencies_ms) > 0
    summary = result.summary()  # the reported percentiles are those of the recorded latencies
    assert summary["p50_ms"] == round(float(np.percentile(result.latencies_ms, 50)), 1)
    assert summary["p99_ms"] == round(float(np.percentile(result.latencies_ms, 99)), 1)


def test_serve_command_starts_answers_and_stops(runs, tiny_model_dir):
    import httpx

    from mcqtune.serving.loadgen import serve_process

    argv = ["--model", str(tiny_model_dir), "--precision", "fp32", f"--adapter=lora={runs['lora']}"]
    with serve_process(argv, start_timeout=120) as url:
        answer = httpx.post(url + "/v1/answer", json={**QUESTION, "adapter": "lora"}, timeout=60)
        body = answer.json()
        assert answer.status_code == 200 and len(body["probabilities"]) == 3
        assert body["letter"] == "ABC"[max(range(3), key=body["probabilities"].__getitem__)]


def test_serve_command_stops_on_an_artifact_that_fails_to_load(tiny_model_dir, tmp_path):
    from mcqtune.serving.loadgen import serve_process

    (tmp_path / "mcqtune.json").write_text("{not json")
    argv = ["--model", str(tiny_model_dir), f"--adapter=bad={tmp_path}"]
    failing = pytest.raises(RuntimeError, match=r"exited with 2.*artifact 'bad'.*corrupt manifest")
    with failing, serve_process(argv, start_timeout=120):
        pass


def test_debias_removes_the_saved_letter_prior(engine):
    import numpy as np

    from mcqtune.evaluation.debias import LetterPrior

    prior = LetterPrior(priors={3: [0.6, 0.3, 0.1]}, scoring="cloze", n_calibration={3: 10})
    with _client(engine, priors={"zero-shot": prior}) as debiasing:
        raw = debiasing.post("/v1/answer", json=QUESTION).json()
        fixed = debiasing.post("/v1/answer", json={**QUESTION, "debias": True}).json()
    assert fixed["debiased"] and not raw["debiased"]
    expected = np.asarray(raw["probabilities"]) / np.asarray([0.6, 0.3, 0.1])
    assert fixed["probabilities"] == pytest.approx(list(expected / expected.sum()), abs=1e-9)


def test_the_batch_window_stretches_to_a_share_of_a_slow_pass():
    """After a 2 s pass the window is 100 ms (5%), not the 1 ms asked; read on a clock the test controls
    (a pass takes 2 s on it, a wait returns at once), so nothing sleeps against the window."""
    import asyncio

    import numpy as np

    from mcqtune.data import MCQExample
    from mcqtune.serving.batching import WINDOW_SHARE, Clock, DynamicBatcher
    from mcqtune.serving.engine import Scores

    class TestClock(Clock):
        def __init__(self):
            self.time = 100.0
            self.waits: list[float] = []

        def now(self) -> float:
            return self.time

        async def wait(self, next_item, timeout):
            self.waits.append(timeout)
            next_item.close()  # nothing arrives within the window
            raise TimeoutError

    clock = TestClock()

    class SlowEngine:
        def score_groups(self, groups):
            clock.time += 2.0
            return {name: Scores("cloze", [np.zeros(2)] * len(examples)) for name, examples in groups.items()}

    class Registry:
        engine = SlowEngine()

        def loadable_together(self, names):
            return [names]

        def ensure(self, name, keep=()):
            pass

    question = MCQExample("q", "q?", ("a", "b"), None)

    async def scenario() -> list[int]:
        batcher = DynamicBatcher(Registry(), window_ms=1.0, max_batch=16, clock=clock)
        await batcher.start()
        first = await batcher.submit([question], [None])
        second = await batcher.submit([question, question], [None, None])  # queued together: one batch
        await batcher.stop()
        return [first[0].batch_size, *(a.batch_size for a in second)]

    assert asyncio.run(scenario()) == [1, 2, 2]
    # the first batch waits the 1 ms asked; after a 2 s pass the next waits 5% of it
    assert clock.waits == [pytest.approx(0.001), pytest.approx(WINDOW_SHARE * 2.0)]
    assert pytest.approx(0.1) == WINDOW_SHARE * 2.0
