"""``mcqtune serve``: one base model in memory, any number of trained runs attached to it by name, chosen
per request over HTTP (docs/SERVING.md)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from mcqtune import serving
from mcqtune.config import PRECISIONS
from mcqtune.settings import setting

HELP = "HTTP API and web page: one base model, many trained artifacts chosen per request"
DESCRIPTION = (
    "Serve answers over HTTP (docs/SERVING.md). Binds 127.0.0.1 unless --host says otherwise; any other "
    "address needs --api-key-file. Without --run it serves the base zero-shot."
)


@dataclass
class ServeArgs:
    model: str | None = setting(None, "base model; every run must match it", none_means="the bundled SmolLM2")
    run: list[str] | None = setting(
        None,
        "a run directory served as NAME (repeat)",
        repeat=True,
        metavar="NAME=DIR",
        aliases=("--adapter",),
    )
    run_dir: str | None = setting(
        None,
        "every run directory directly under DIR is loadable by its name",
        metavar="DIR",
        aliases=("--adapter-dir",),
    )
    host: str = setting(serving.DEFAULT_HOST, "address to bind")
    api_key_file: str | None = setting(None, "a file holding the API key requests must carry", metavar="FILE")
    precision: str = setting("auto", "auto: bf16 where supported", choices=PRECISIONS)
    no_batching: bool = setting(False, "one question per forward pass")
    port: int = setting(serving.DEFAULT_PORT, "port", check="positive")
    max_loaded: int = setting(
        serving.DEFAULT_MAX_LOADED, "--run-dir runs held at once (LRU)", check="positive"
    )
    batch_window_ms: float = setting(
        serving.DEFAULT_WINDOW_MS, "how long a batch waits for more questions", check="non_negative"
    )
    max_batch: int = setting(
        serving.DEFAULT_MAX_BATCH, "questions per forward pass at most", check="positive"
    )
    max_body_bytes: int = setting(
        serving.DEFAULT_MAX_BODY_BYTES, "larger request bodies get 413", check="positive"
    )
    prior: list[str] | None = setting(
        None,
        "letter prior (eval --save-prior) for run NAME or zero-shot; enables debias: true",
        repeat=True,
        metavar="NAME=FILE",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mcqtune.cli.parsing import add_settings

    add_settings(parser, ServeArgs)


def read_api_key(args: argparse.Namespace) -> str | None:
    """The key requests must carry: required off loopback, read from a file (never a flag's value)."""
    from mcqtune.errors import ConfigError

    if args.api_key_file:
        api_key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
        if not api_key:
            raise ConfigError(f"--api-key-file {args.api_key_file}: the file is empty")
        return api_key
    if args.host not in serving.LOOPBACK_HOSTS:
        raise ConfigError(
            f"--host {args.host} is reachable from other machines: pass --api-key-file FILE "
            "(every request but /healthz must then carry the key)"
        )
    return None


def read_priors(args: argparse.Namespace, named: dict[str, Path]) -> dict:
    """Each ``--prior NAME=FILE`` loaded, for a name that is served."""
    from mcqtune.errors import ConfigError
    from mcqtune.evaluation.debias import LetterPrior
    from mcqtune.serving.app import ZERO_SHOT
    from mcqtune.serving.registry import parse_named_paths

    prior_paths = parse_named_paths(args.prior, "--prior")
    for name in prior_paths:
        in_dir = args.run_dir and (Path(args.run_dir) / name).is_dir()
        if name != ZERO_SHOT and name not in named and not in_dir:
            known = ", ".join([ZERO_SHOT, *named]) + (
                f", or a run directory under {args.run_dir}" if args.run_dir else ""
            )
            raise ConfigError(
                f"--prior {name}=...: no artifact named '{name}' is served; the names are {known}"
            )
    return {name: LetterPrior.load(path) for name, path in prior_paths.items()}


def run(args: argparse.Namespace) -> int:
    """Load the base and every --run, then answer HTTP requests until Ctrl-C."""
    import sys

    from mcqtune.cli.parsing import check_settings
    from mcqtune.serving.registry import parse_named_paths

    check_settings(args, ServeArgs)
    api_key = read_api_key(args)
    named = parse_named_paths(args.run, "--run")
    priors = read_priors(args, named)
    import uvicorn

    from mcqtune.serving.app import ServeSettings, create_app
    from mcqtune.serving.engine import open_engine
    from mcqtune.serving.registry import ArtifactRegistry

    max_batch = 1 if args.no_batching else args.max_batch
    engine = open_engine(args.model, args.precision, batch_size=max_batch)
    registry = ArtifactRegistry(engine, named, Path(args.run_dir) if args.run_dir else None, args.max_loaded)
    registry.load_named()
    settings = ServeSettings(
        window_ms=0.0 if args.no_batching else args.batch_window_ms,
        max_batch=max_batch,
        max_body_bytes=args.max_body_bytes,
        api_key=api_key,
        priors=priors,
    )
    app = create_app(registry, settings)
    names = ", ".join(registry.available()) or "none (zero-shot only)"
    print(
        f"serving {engine.base_id} with artifacts: {names} on http://{args.host}:{args.port}/",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
