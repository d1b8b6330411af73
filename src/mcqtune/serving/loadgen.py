"""A server on a free loopback port in a background thread, and a bounded load generator against it.

Used by the load test, the browser test and ``bench/serve_bench.py``: the same server start and the
same client loop, so their numbers are comparable.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn

from mcqtune.data import MCQExample
from mcqtune.serving import DEFAULT_HOST


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(app: Any, host: str = DEFAULT_HOST, start_timeout: float = 60.0) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free port until the block ends; yields its base URL."""
    port = free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="mcqtune-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server did not start on {host}:{port} within {start_timeout:.0f} s")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def serve_process(argv: list[str], start_timeout: float = 300.0) -> Iterator[str]:
    """``mcqtune serve ARGV`` in its own process on a free loopback port; yields its URL once
    ``/healthz`` answers, and stops it when the block ends."""
    port = free_port()
    command = [sys.executable, "-m", "mcqtune", "serve", "--port", str(port), *argv]
    process = subprocess.Popen(command, env=os.environ.copy(), stderr=subprocess.PIPE, text=True)
    url = f"http://{DEFAULT_HOST}:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mcqtune serve exited with {process.returncode}: {process.stderr.read()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mcqtune serve did not answer /healthz within {start_timeout:.0f} s")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


@dataclass
class LoadResult:
    requests: int
    errors: list[str]
    seconds: float
    latencies_ms: list[float]
    batch_sizes: list[int]

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "errors": len(self.errors),
            "seconds": round(self.seconds, 2),
            "requests_per_second": round(self.requests_per_second, 2),
            "p50_ms": round(self.percentile(50), 1),
            "p99_ms": round(self.percentile(99), 1),
            "mean_batch_size": round(float(np.mean(self.batch_sizes)), 2) if self.batch_sizes else 0.0,
        }


def run_load(
    url: str,
    payloads: list[dict[str, Any]],
    *,
    clients: int = 8,
    total: int = 400,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> LoadResult:
    """``total`` POSTs to ``url`` from ``clients`` threads, each waiting for its answer before the next
    (closed loop), cycling through ``payloads``; stops by itself after ``total`` requests."""
    latencies: list[float] = []
    errors: list[str] = []
    batch_sizes: list[int] = []
    counter = iter(range(total))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=timeout, headers=headers) as http:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                start = time.perf_counter()
                try:
                    response = http.post(url, json=payloads[index % len(payloads)])
                    elapsed = (time.perf_counter() - start) * 1000
                    with lock:
                        if response.status_code == 200:
                            latencies.append(elapsed)
                            batch_sizes.append(response.json().get("batch_size", 1))
                        else:
                            errors.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return LoadResult(total, errors, time.perf_counter() - start, latencies, batch_sizes)


# ------------------------------------------------------------------------------------ lm-eval clients

LM_EVAL_TASK = "mcq_arc_local"  # the local multiple-choice task the OpenAI-endpoint checks run


def write_lm_eval_task(directory: Path, examples: list[MCQExample]) -> Path:
    """A local lm-evaluation-harness multiple-choice task (``--include_path DIRECTORY --tasks
    mcq_arc_local``) over ``examples``: a JSONL file and its YAML, ARC's "Question: ...\\nAnswer:"
    prompt, each option scored as a continuation. Returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = [{"question": e.question, "choices": list(e.choices), "answer": e.answer} for e in examples]
    data = directory / f"{LM_EVAL_TASK}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (directory / f"{LM_EVAL_TASK}.yaml").write_text(
        f"task: {LM_EVAL_TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8",
    )
    return directory


def local_completions_args(
    url: str, model: str, tokenizer: str | Path, batch_size: int = 1
) -> dict[str, Any]:
    """lm-eval ``local-completions`` model arguments for artifact ``model`` served at ``url``: token-id
    prompts encoded by the local ``tokenizer`` directory (no network), BOS added as lm-eval's ``hf``
    model adds it for this tokenizer, so the two score the same tokens."""
    return {
        "model": model,
        "base_url": f"{url}/v1/completions",
        "tokenizer_backend": "huggingface",
        "tokenizer": str(tokenizer),
        "batch_size": batch_size,
        "max_retries": 1,
        "add_bos_token": True,
    }


def lm_eval_scores(task_dir: Path, model: str, model_args: dict[str, Any]) -> tuple[float, list[float]]:
    """Run lm-eval (the ``test`` extra) on :data:`LM_EVAL_TASK`: its accuracy and every option's
    log-likelihood in question order."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[LM_EVAL_TASK],
        # only the local task: indexing lm-eval's thousands of built-in tasks takes ~9 s a call
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        log_samples=True,
    )
    samples = sorted(results["samples"][LM_EVAL_TASK], key=lambda s: s["doc_id"])
    loglikelihoods = [float(response[0]) for s in samples for response in s["filtered_resps"]]
    return results["results"][LM_EVAL_TASK]["acc,none"], loglikelihoods
