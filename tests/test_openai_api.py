"""The OpenAI-compatible endpoints of `mcqtune serve`, driven by the real clients on a loopback server:
lm-evaluation-harness's ``local-completions`` model scores a served LoRA artifact as lm-eval's own
``hf`` model with ``peft=`` scores the same adapter, and runs against a bottleneck-adapter and a prefix
artifact; the OpenAI SDK lists the models, gets a completion with logprobs and echo, and streams a chat
completion; every method's artifact computes its own log-probabilities; bad requests get OpenAI-style
4xx errors naming the field (tiny random model; each client run is bounded in time)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mcqtune.cli.main import main
from mcqtune.serving.app import ServeSettings, create_app
from mcqtune.serving.engine import open_engine
from mcqtune.serving.loadgen import (
    lm_eval_scores,
    local_completions_args,
    running_server,
    write_lm_eval_task,
)
from mcqtune.serving.registry import ArtifactRegistry

openai = pytest.importorskip("openai", reason="the OpenAI SDK is a test extra (pip install -e .[test])")

LM_EVAL_QUESTIONS = 24  # ARC-Easy validation rows in the lm-eval parity task (CI time)
APPLIED_QUESTIONS = 12  # ... in the tasks that only check an artifact is applied (CI time)
CLIENT_TIMEOUT_S = 600  # one lm-eval run against the tiny model takes seconds; this bounds a hang
METHODS = ("lora", "adapter", "prefix", "ia3", "full", "subset")


def _train(model_dir: Path, out: Path, method: str, *extra: str) -> Path:
    argv = ["train", "--model", str(model_dir), "--method", method, "--train", "arc_easy"]
    argv += ["--validation", "arc_easy", "--objective", "ranking", "--output", str(out), "--lr", "0.05"]
    argv += ["--max-steps", "3", "--batch-size", "2", "--train-limit", "6", "--eval-limit", "4"]
    argv += ["--final-eval-limit", "8", "--eval-steps", "3", "--quiet", *extra]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("openai-runs")
    extra = {"subset": ("--top-k", "2")}
    return {m: _train(tiny_model_dir, root / m, m, *extra.get(m, ())) for m in METHODS}


def _app(tiny_model_dir: Path, runs: dict[str, Path], **settings):
    registry = ArtifactRegistry(open_engine(str(tiny_model_dir), "fp32", 16), dict(runs))
    registry.load_named()
    return create_app(registry, ServeSettings(**settings))


@pytest.fixture(scope="module")
def server(tiny_model_dir, runs):
    """A real uvicorn server on a free loopback port with every method's artifact attached."""
    with running_server(_app(tiny_model_dir, runs)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", timeout=120, max_retries=0)


# ------------------------------------------------------------------------------------ lm-eval


def _task_dir(tmp_path: Path, arc_examples, questions: int = LM_EVAL_QUESTIONS) -> Path:
    return write_lm_eval_task(tmp_path, arc_examples[:questions])


def _lm_eval(task_dir: Path, model: str, model_args: dict) -> tuple[float, list[float]]:
    """lm-eval's accuracy and every option's log-likelihood, within CLIENT_TIMEOUT_S."""
    pytest.importorskip("lm_eval", reason="lm-eval is a test extra (pip install -e .[test])")
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lm_eval_scores, task_dir, model, model_args).result(timeout=CLIENT_TIMEOUT_S)


def _local_completions(server: str, name: str, tiny_model_dir: Path, batch_size: int = 1) -> dict:
    return local_completions_args(server, name, tiny_model_dir, batch_size)


def test_lm_eval_local_completions_scores_a_served_lora_like_hf_with_peft(
    server, runs, tiny_model_dir, tmp_path, arc_examples
):
    task_dir = _task_dir(tmp_path, arc_examples)
    served, served_ll = _lm_eval(
        task_dir, "local-completions", _local_completions(server, "lora", tiny_model_dir, 4)
    )
    hf_args = {"pretrained": str(tiny_model_dir), "peft": str(runs["lora"] / "adapter"), "dtype": "float32"}
    hf_args["add_bos_token"] = True
    direct, direct_ll = _lm_eval(task_dir, "hf", {**hf_args, "device": "cpu", "batch_size": 4})
    print(f"lm-eval on {LM_EVAL_QUESTIONS} ARC-Easy questions: served {served:.3f}, hf+peft {direct:.3f}")
    assert abs(served - direct) * LM_EVAL_QUESTIONS <= 2
    assert len(served_ll) == len(direct_ll) == sum(len(e.choices) for e in arc_examples[:LM_EVAL_QUESTIONS])
    assert served_ll == pytest.approx(direct_ll, abs=1e-3)  # the very log-likelihoods, not only the argmax


@pytest.mark.parametrize("name", ["adapter", "prefix"])
def test_lm_eval_local_completions_runs_against_non_lora_artifacts(
    server, tiny_model_dir, tmp_path, arc_examples, name
):
    task_dir = _task_dir(tmp_path, arc_examples, APPLIED_QUESTIONS)
    accuracy, artifact_ll = _lm_eval(
        task_dir, "local-completions", _local_completions(server, name, tiny_model_dir, 4)
    )
    base_id = str(tiny_model_dir)
    _, base_ll = _lm_eval(
        task_dir, "local-completions", _local_completions(server, base_id, tiny_model_dir, 4)
    )
    assert 0.0 <= accuracy <= 1.0
    assert len(artifact_ll) == len(base_ll) > 0
    assert artifact_ll != pytest.approx(base_ll, abs=1e-4)  # the artifact was applied, not the base


# ------------------------------------------------------------------------------------ OpenAI SDK


def test_sdk_lists_the_base_and_every_artifact(client, tiny_model_dir):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == [str(tiny_model_dir), *sorted(METHODS)]
    assert all(m.owned_by == "mcqtune" for m in models.data)


def test_sdk_completion_with_logprobs_and_echo(client, tiny_model_dir):
    prompt = "The capital of France is"
    completion = client.completions.create(model="lora", prompt=prompt, max_tokens=3, logprobs=2, echo=True)
    choice = completion.choices[0]
    assert choice.text.startswith(prompt) and len(choice.text) > len(prompt)
    assert choice.finish_reason in ("length", "stop")
    logprobs = choice.logprobs
    prompt_tokens = completion.usage.prompt_tokens
    assert (
        len(logprobs.tokens)
        == len(logprobs.token_logprobs)
        == prompt_tokens + completion.usage.completion_tokens
    )
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None  # nothing predicts it
    assert all(lp <= 0 for lp in logprobs.token_logprobs[1:])
    for token, logprob, top in zip(
        logprobs.tokens[1:], logprobs.token_logprobs[1:], logprobs.top_logprobs[1:], strict=True
    ):
        assert 2 <= len(top) <= 3 and top[token] == pytest.approx(logprob)  # top-2 and the token itself
    for logprob, top in zip(
        logprobs.token_logprobs[prompt_tokens:], logprobs.top_logprobs[prompt_tokens:], strict=True
    ):
        assert logprob == pytest.approx(max(top.values()))  # greedy: each generated token is the argmax
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset == sorted(logprobs.text_offset)


def test_sdk_streams_a_chat_completion(client):
    messages = [{"role": "user", "content": "Name a planet."}]
    whole = client.chat.completions.create(model="adapter", messages=messages, max_tokens=6)
    stream = client.chat.completions.create(
        model="adapter", messages=messages, max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens <= 6


def test_chat_logprobs_and_stop_strings(client):
    messages = [{"role": "user", "content": "Say something."}]
    whole = client.chat.completions.create(
        model="lora", messages=messages, max_tokens=8, logprobs=True, top_logprobs=2
    )
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens
    assert all(
        len(t.top_logprobs) == 2 and t.logprob == pytest.approx(t.top_logprobs[0].logprob) for t in content
    )
    text = whole.choices[0].message.content
    if len(text) > 2:  # a stop string in the middle of the greedy text cuts it there
        stop = text[1:3]
        cut = client.chat.completions.create(model="lora", messages=messages, max_tokens=8, stop=[stop])
        assert cut.choices[0].message.content == text[: text.find(stop)]
        assert cut.choices[0].finish_reason == "stop"


def test_every_method_computes_its_own_logprobs(client, tiny_model_dir):
    """Each artifact's echo log-probabilities differ from the base's, and asking again gives the same
    numbers after the other artifacts have run (activation switches cleanly on one base)."""

    def echo(model: str) -> list[float]:
        completion = client.completions.create(
            model=model, prompt=[[1, 504, 3276, 314, 253, 1345]], max_tokens=0, echo=True, logprobs=0
        )
        assert completion.usage.completion_tokens == 0
        return completion.choices[0].logprobs.token_logprobs[1:]

    base = echo(str(tiny_model_dir))
    first = {m: echo(m) for m in METHODS}
    for method in METHODS:
        assert first[method] != pytest.approx(base, abs=1e-5), method
    for method in reversed(METHODS):
        assert echo(method) == pytest.approx(first[method], abs=1e-5), method


def test_a_batch_of_prompts_equals_each_alone(client):
    prompts = ["Water boils at", "The sun is a", "Plants need"]
    batch = client.completions.create(model="lora", prompt=prompts, max_tokens=2, logprobs=1, echo=True)
    assert [c.index for c in batch.choices] == [0, 1, 2]
    for prompt, choice in zip(prompts, batch.choices, strict=True):
        alone = client.completions.create(model="lora", prompt=prompt, max_tokens=2, logprobs=1, echo=True)
        assert choice.text == alone.choices[0].text
        assert choice.logprobs.token_logprobs[1:] == pytest.approx(
            alone.choices[0].logprobs.token_logprobs[1:], abs=1e-4
        )


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("body", "status", "param", "says"),
    [
        ({"model": "nope", "prompt": "x"}, 404, "model", "does not exist"),
        ({"prompt": "x"}, 400, "model", "Field required"),
        ({"model": "lora", "prompt": "x", "n": 2}, 400, "n", "n=2 is not supported"),
        ({"model": "lora", "prompt": "x", "best_of": 3}, 400, "best_of", "not supported"),
        ({"model": "lora", "prompt": "x", "temperature": 0.7}, 400, "temperature", "greedy"),
        ({"model": "lora", "prompt": "x", "top_p": 0.9}, 400, "top_p", "not supported"),
        ({"model": "lora", "prompt": "x", "presence_penalty": 1}, 400, "presence_penalty", "not supported"),
        ({"model": "lora", "prompt": "x", "logit_bias": {"5": 1}}, 400, "logit_bias", "not supported"),
        ({"model": "lora", "prompt": "x", "suffix": "y"}, 400, "suffix", "not supported"),
        ({"model": "lora", "prompt": "x", "frobnicate": 1}, 400, "frobnicate", "unknown or unsupported"),
        ({"model": "lora", "prompt": "x", "logprobs": 21}, 400, "logprobs", "less than or equal to 20"),
        ({"model": "lora", "prompt": "x", "max_tokens": 0}, 400, "max_tokens", "needs echo"),
        ({"model": "lora", "prompt": "x", "max_tokens": -1}, 400, "max_tokens", "greater than or equal"),
        ({"model": "lora", "prompt": ""}, 400, "prompt", "empty"),
        ({"model": "lora", "prompt": [[1, 10**9]]}, 400, "prompt", "outside the vocabulary"),
        ({"model": "lora", "prompt": "x " * 1100}, 400, "prompt", "maximum context length is 1024"),
        ({"model": "lora", "prompt": "x", "max_tokens": 2000}, 400, "prompt", "maximum context length"),
        ({"model": "lora", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
    ],
)
def test_bad_completion_requests_get_openai_errors(tiny_model_dir, runs, body, status, param, says):
    with TestClient(_app(tiny_model_dir, {"lora": runs["lora"]})) as test_client:
        response = test_client.post("/v1/completions", json=body)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == param and says in error["message"], error
        assert error["type"] == "invalid_request_error"
        ok = test_client.post("/v1/completions", json={"model": "lora", "prompt": "x", "max_tokens": 1})
        assert ok.status_code == 200  # the server keeps serving


def test_bad_chat_requests_and_sdk_exceptions(client):
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="nope", messages=messages)
    assert unknown.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as many:
        client.chat.completions.create(model="lora", messages=messages, n=2)
    assert many.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as long:
        client.chat.completions.create(model="lora", messages=[{"role": "user", "content": "x " * 1100}])
    assert long.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as streamed_long:  # a stream's errors come before its 200
        client.chat.completions.create(model="lora", messages=messages, max_tokens=5000, stream=True)
    assert streamed_long.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as role:
        client.chat.completions.create(model="lora", messages=[{"role": "robot", "content": "hi"}])
    assert role.value.body["param"] == "messages.0.role"


def test_api_key_and_body_limit_answer_in_openai_shape(tiny_model_dir, runs):
    app = _app(tiny_model_dir, {"lora": runs["lora"]}, api_key="sesame", max_body_bytes=2048)
    with running_server(app) as url:
        wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0, timeout=60)
        with pytest.raises(openai.AuthenticationError) as denied:
            wrong.models.list()
        assert denied.value.body["message"] == "wrong API key"
        right = openai.OpenAI(base_url=f"{url}/v1", api_key="sesame", max_retries=0, timeout=60)
        assert "lora" in [m.id for m in right.models.list().data]
        with pytest.raises(openai.APIStatusError) as too_large:
            right.completions.create(model="lora", prompt="x" * 4000, max_tokens=1)
        assert too_large.value.status_code == 413
        assert "byte limit" in too_large.value.body["message"]


def test_logprobs_sum_like_a_scorer(client):
    """echo's log-probabilities are a distribution's: exp of every top-20 at a position sums to <= 1,
    and the token's own log-probability is among them when it is likely."""
    completion = client.completions.create(
        model="subset", prompt="a b c d", max_tokens=1, logprobs=20, echo=True
    )
    for top in completion.choices[0].logprobs.top_logprobs[1:]:
        assert sum(math.exp(v) for v in top.values()) <= 1.0 + 1e-4
