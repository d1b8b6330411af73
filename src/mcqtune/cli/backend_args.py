"""`compare`'s execution flags: where its jobs run and how many at once (mcqtune.compare.backends)."""

from __future__ import annotations

import argparse

from mcqtune.compare.backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_CPUS_PER_JOB,
    DEFAULT_PARALLEL,
    RAY_INSTALL_HINT,
    Execution,
)


def add_backend_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("execution", "run several methods at once (docs/SCALING.md)")
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default=DEFAULT_BACKEND,
        help=f"local: this machine; ray: each method a Ray task (needs {RAY_INSTALL_HINT}) "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        metavar="K",
        help="local backend: K methods at once, one GPU each when there are GPUs, else the CPU cores "
        "split between them; 1 runs them one after another (default: %(default)s)",
    )
    group.add_argument(
        "--address",
        metavar="ADDR",
        help="ray backend: the cluster's head, HOST:PORT, ray://HOST:PORT or auto "
        "(default: start a local Ray instance on this machine and stop it at the end)",
    )
    group.add_argument(
        "--cpus-per-method",
        type=float,
        metavar="N",
        help="ray backend: CPUs each method's task requests; its torch threads "
        f"(default: {DEFAULT_CPUS_PER_JOB:g}, or the largest node's CPUs if fewer)",
    )
    group.add_argument(
        "--gpus-per-method",
        type=float,
        metavar="N",
        help="ray backend: GPUs each method's task requests (default: 1 on a cluster with GPUs, else 0)",
    )


def execution_from_args(args: argparse.Namespace) -> Execution:
    return Execution(
        backend=args.backend,
        parallel=args.parallel,
        address=args.address,
        cpus_per_job=args.cpus_per_method,
        gpus_per_job=args.gpus_per_method,
    )
