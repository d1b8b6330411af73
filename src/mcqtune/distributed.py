"""Several processes of one launch (torchrun, ``accelerate launch``, ``train --num-processes``).

Everything mcqtune does across processes goes through here: which process this is, sharing a decision
made by the main process, and gathering scored questions. One process (no launcher) takes none of the
collective paths, so single-process runs do exactly what they did before.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")

# Set by every launcher (torchrun, accelerate launch) in each process it starts.
WORLD_SIZE_ENV = "WORLD_SIZE"


def launched_processes() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return int(os.environ.get(WORLD_SIZE_ENV, "1"))


def join_launch() -> None:
    """Join the launch's process group (a no-op without a launcher).

    ``PartialState`` initialises torch.distributed from the launcher's environment with the backend
    accelerate picks (gloo on CPU, NCCL on GPUs); the trainer's ``Accelerator`` reuses it. Without
    ``cpu=True`` on a machine without GPUs accelerate would see no multi-process setup at all.
    """
    if launched_processes() > 1:
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_size()[0] == 0


def barrier() -> None:
    """Wait until every process gets here (the others wait while the main process writes)."""
    if rank_and_size()[1] > 1:
        torch.distributed.barrier()


def from_main(value: T) -> T:
    """The main process's ``value``, on every process (a lock taken, an error met, a decision made)."""
    if rank_and_size()[1] == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (a stop request seen by one of them)."""
    if rank_and_size()[1] == 1:
        return flag
    flags: list[Any] = [None] * rank_and_size()[1]
    torch.distributed.all_gather_object(flags, bool(flag))
    return any(flags)


def my_share(items: Sequence[T]) -> list[T]:
    """This process's items of ``items`` (every ``size``-th, from its rank): whole batches stay whole."""
    rank, size = rank_and_size()
    return list(items[rank::size])


def gather_from_all(local: list[T]) -> list[T]:
    """Every process's ``local`` list, concatenated in rank order: one gather, on every process.

    accelerate's ``gather_object`` (not ``gather_for_metrics``: the shards are made by hand, so nothing
    was padded and there are no duplicates to drop).
    """
    if rank_and_size()[1] == 1:
        return local
    from accelerate.utils import gather_object

    return gather_object(local)


def relaunch(num_processes: int, module_args: list[str]) -> int:
    """Run ``python -m mcqtune MODULE_ARGS`` as ``num_processes`` processes of one launch; its exit code.

    torch.distributed.run (torchrun), not ``accelerate launch``: on a CPU-only machine ``accelerate
    launch --cpu`` starts a single process unless MPI is set up, and torchrun works on CPUs (gloo) and
    GPUs (NCCL) alike. ``--standalone`` picks a free rendezvous port on this machine.
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={num_processes}",
        "-m",
        "mcqtune",
        *module_args,
    ]
    return subprocess.call(command)
