"""`mcqtune serve` end to end on the real bundled model with two freshly trained artifacts: the web page
in headless Chromium shows the API's probabilities, and a bounded load test on loopback has no errors.

The browser test is skipped only when no Chromium can be started (Debian's ``chromium`` package is what
``.ci/run`` installs), and then says so in the skip reason and a warning; under CI (``CI=true``, which
``.ci/run`` sets) that is a failure instead, so CI cannot pass without the browser test.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from mcqtune.cli.main import main
from mcqtune.serving.app import ServeSettings, create_app
from mcqtune.serving.engine import open_engine
from mcqtune.serving.loadgen import run_load, running_server
from mcqtune.serving.registry import ArtifactRegistry

pytestmark = pytest.mark.slow

# The README's screenshot; the test writes it only when asked, so a test run leaves the checkout clean.
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "serve-page.png"
UPDATE_SCREENSHOT = "MCQTUNE_UPDATE_SCREENSHOT"  # set to 1 to rewrite it
LOAD_REQUESTS = 80  # 10 per client; throughput and latency bounds: bench/serve_bench.py
LOAD_CLIENTS = 8


def _train_real(out: Path, method: str) -> Path:
    argv = ["train", "--method", method, "--train", "arc_easy", "--objective", "ranking"]
    argv += ["--output", str(out), "--max-steps", "4", "--batch-size", "2", "--train-limit", "16"]
    argv += ["--eval-steps", "4", "--eval-limit", "2", "--final-eval-limit", "8", "--quiet"]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real server on a free loopback port, serving a LoRA and a bottleneck-adapter artifact."""
    root = tmp_path_factory.mktemp("serve-real")
    runs = {"lora-arc": _train_real(root / "lora-arc", "lora")}
    runs["adapter-arc"] = _train_real(root / "adapter-arc", "adapter")
    registry = ArtifactRegistry(open_engine(None, "auto", batch_size=16), runs)
    registry.load_named()
    with running_server(create_app(registry, ServeSettings())) as url:
        yield url


def _chromium(playwright):
    """Debian's chromium, else Playwright's own download; None when neither starts."""
    attempts = [{"executable_path": path} for path in (shutil.which("chromium"),) if path] + [{}]
    problems = []
    for options in attempts:
        try:
            return playwright.chromium.launch(args=["--no-sandbox"], **options)
        except Exception as exc:  # any launch failure means: this one is not usable
            problems.append(f"{options or 'playwright chromium'}: {str(exc).splitlines()[0]}")
    skip_or_fail_in_ci("Chromium cannot be started here (" + "; ".join(problems) + ")")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skip_or_fail_in_ci(why: str) -> None:
    """Skip the browser test, loudly; in CI, fail it."""
    if in_ci():
        pytest.fail(f"BROWSER TEST CANNOT RUN IN CI: {why}")
    reason = f"BROWSER TEST SKIPPED: {why}"
    warnings.warn(reason, stacklevel=3)
    pytest.skip(reason)


def test_page_shows_the_apis_probabilities_in_a_real_browser(server, tmp_path):
    import httpx

    try:
        from playwright import sync_api
    except ImportError:
        skip_or_fail_in_ci("no playwright")
    with sync_api.sync_playwright() as playwright:
        browser = _chromium(playwright)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.goto(server + "/")
        page.wait_for_selector("body[data-ready=true]", timeout=60_000)
        page.select_option("#adapter", "lora-arc")
        page.select_option("#example", "arc_easy:1")
        page.focus("#submit")
        page.keyboard.press("Enter")  # usable by keyboard
        page.wait_for_selector("#panel-answer .result", timeout=60_000)
        shown = [
            float(p)
            for p in page.eval_on_selector_all("#panel-answer li", "r => r.map(x => x.dataset.probability)")
        ]
        letter = page.inner_text("#panel-answer .letter")
        assert page.locator("#panel-answer [data-correct]").count() == 1  # a known answer: right or wrong
        shot = SCREENSHOT if os.environ.get(UPDATE_SCREENSHOT) == "1" else tmp_path / SCREENSHOT.name
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes().startswith(b"\x89PNG")

        question = page.input_value("#question")
        choices = [page.input_value(f"#choices li:nth-child({i + 1}) input") for i in range(len(shown))]
        api = httpx.post(
            server + "/v1/answer",
            json={"question": question, "choices": choices, "adapter": "lora-arc"},
            timeout=60,
        ).json()
        assert letter == api["letter"]
        assert shown == pytest.approx(api["probabilities"], abs=1e-6)

        page.click("#tab-compare")
        page.click("#submit")
        page.wait_for_selector("#panel-compare .result >> nth=2", timeout=60_000)
        adapters = page.eval_on_selector_all("#panel-compare .result", "r => r.map(x => x.dataset.adapter)")
        assert adapters == ["", "lora-arc", "adapter-arc"]

        page.set_viewport_size({"width": 375, "height": 800})  # phone width: nothing wider than the screen
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        browser.close()


def test_load_of_8_concurrent_clients_has_no_errors(server, arc_examples, record_property):
    payloads = [
        {"question": e.question, "choices": list(e.choices), "adapter": name}
        for e, name in zip(arc_examples[:30], [None, "lora-arc", "adapter-arc"] * 10, strict=True)
    ]
    result = run_load(server + "/v1/answer", payloads, clients=LOAD_CLIENTS, total=LOAD_REQUESTS)
    summary = result.summary()
    print("real-model load test:", json.dumps(summary))
    for key, value in summary.items():  # in the JUnit XML of a CI run (--junitxml)
        record_property(key, value)
    assert result.errors == []
    assert summary["requests"] == LOAD_REQUESTS and len(result.latencies_ms) == LOAD_REQUESTS
    assert min(result.latencies_ms) > 0  # (bounds on the latencies: bench/serve_bench.py)
    assert summary["p50_ms"] == round(float(np.percentile(result.latencies_ms, 50)), 1)
    assert summary["p99_ms"] == round(float(np.percentile(result.latencies_ms, 99)), 1)


def test_a_browser_that_cannot_start_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="BROWSER TEST CANNOT RUN IN CI: no chromium"):
        skip_or_fail_in_ci("no chromium")
    monkeypatch.delenv("CI")
    with pytest.warns(UserWarning, match="BROWSER TEST SKIPPED"), pytest.raises(pytest.skip.Exception):
        skip_or_fail_in_ci("no chromium")
