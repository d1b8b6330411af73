"""Throughput of ``mcqtune serve`` with dynamic batching on vs off, in one run (docs/SERVING.md).

    .venv/bin/python bench/serve_bench.py [--requests 400] [--clients 8]
        [--adapter NAME=DIR ...] [--output runs/serve-bench.json]

Starts the real server (``mcqtune serve`` on a free loopback port, its own process) twice with the same
model and artifacts, once as configured and once with ``--no-batching``, and sends each the same closed
loop of requests from ``--clients`` concurrent clients (bundled ARC-Easy validation questions, cycling
through the artifacts). Rounds alternate on, off, off, on so machine noise hits both. Prints requests/s
and p50/p99 latency of each and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mcqtune.data import bundled_path, load_examples
from mcqtune.serving.loadgen import LoadResult, run_load, serve_process
from mcqtune.serving.registry import parse_named_paths

ROUNDS = (True, False, False, True)  # batching on/off, A-B-B-A


def measure(extra: list[str], payloads: list[dict], clients: int, requests: int) -> LoadResult:
    with serve_process(extra) as url:
        run_load(url + "/v1/answer", payloads, clients=clients, total=2 * clients)  # warm-up
        return run_load(url + "/v1/answer", payloads, clients=clients, total=requests)


def merged(results: list[LoadResult]) -> LoadResult:
    return LoadResult(
        requests=sum(r.requests for r in results),
        errors=[e for r in results for e in r.errors],
        seconds=sum(r.seconds for r in results),
        latencies_ms=[x for r in results for x in r.latencies_ms],
        batch_sizes=[x for r in results for x in r.batch_sizes],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per setting (default 400)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--adapter", action="append", metavar="NAME=DIR", help="artifact to serve (repeat)")
    parser.add_argument("--model", help="base model (default: bundled)")
    parser.add_argument("--output", help="write the numbers as JSON here")
    args = parser.parse_args(argv)

    names: list[str | None] = [None, *parse_named_paths(args.adapter)]
    examples = load_examples(bundled_path("arc_easy", "validation"), limit=60).examples
    payloads = [
        {"question": e.question, "choices": list(e.choices), "adapter": names[i % len(names)]}
        for i, e in enumerate(examples)
    ]
    common = [f"--adapter={a}" for a in args.adapter or []] + (["--model", args.model] if args.model else [])
    per_round = args.requests // 2
    rounds: dict[bool, list[LoadResult]] = {True: [], False: []}
    for batching in ROUNDS:
        extra = common if batching else [*common, "--no-batching"]
        rounds[batching].append(measure(extra, payloads, args.clients, per_round))
        print(f"batching {'on ' if batching else 'off'}: {rounds[batching][-1].summary()}", flush=True)
    on, off = merged(rounds[True]).summary(), merged(rounds[False]).summary()
    speedup = on["requests_per_second"] / off["requests_per_second"]
    report = {
        "clients": args.clients,
        "artifacts": names,
        "batching_on": on,
        "batching_off": off,
        "speedup": round(speedup, 2),
        "cpu_threads": os.cpu_count(),
    }
    print(f"{'setting':<13} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>10} errors")
    for label, row in (("batching on", on), ("batching off", off)):
        print(
            f"{label:<13} {row['requests_per_second']:7.1f} {row['p50_ms']:8.0f} {row['p99_ms']:8.0f} "
            f"{row['mean_batch_size']:10.1f} {row['errors']}"
        )
    print(f"speed-up: {speedup:.2f}x requests/s")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if on["errors"] == off["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
