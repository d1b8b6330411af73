"""Training checkpoints: everything a killed run needs to continue exactly where it stopped.

A checkpoint is a directory ``OUTPUT/checkpoints/step-N`` written with :func:`atomic_directory`, so it
either exists complete or not at all::

    trainable.safetensors   the trainable parameters after step N
    best.safetensors        the best-so-far trainable state (when validation has picked one)
    optimizer.pt            optimizer.state_dict()   (torch.save; read back with weights_only=True)
    scheduler.pt            scheduler.state_dict()   (idem)
    rng.safetensors         torch CPU (and CUDA) generator states (of every process of a
                            multi-process run: those of rank R > 0 prefixed ``rankR/``)
    checkpoint.json         step, data position, number of processes, history, best step/accuracy,
                            python and numpy RNG states (``rng``: rank 0; ``rng_other_ranks``: the
                            rest), the training config and data fingerprints, and the size and sha256
                            of every file above (written last)

No file is unpickled: tensors come from safetensors, and the optimizer/scheduler files are loaded with
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers. Loading verifies
every file's size and sha256 first, so a checkpoint damaged after it was written (a truncated copy, a
disk error) is reported and the previous one is used instead of something half-valid.

Rotation keeps the newest ``keep`` checkpoints and deletes older ones only after the new one is
complete, so the only good checkpoint is never deleted first.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mcqtune.artifacts import CHECKPOINTS_DIR
from mcqtune.atomic import atomic_directory, directory_bytes, remove_stale_temporaries, remove_tree
from mcqtune.errors import CheckpointError
from mcqtune.preflight import MIB, DiskSpaceError, ensure_free_space

log = logging.getLogger(__name__)

CHECKPOINT_MANIFEST = "checkpoint.json"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step-(\d+)$")
# Config keys that may change between a run and its resume: they do not change what is computed.
# a resume never validates step 0 again, so validate_at_start cannot change what it continues
RESUME_IGNORED_KEYS = frozenset({"output", "save_steps", "keep_checkpoints", "validate_at_start"})


def tensor_bytes(tensors: dict[str, torch.Tensor] | list[torch.Tensor]) -> int:
    values = tensors.values() if isinstance(tensors, dict) else tensors
    return sum(t.numel() * t.element_size() for t in values)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    total = 0
    for state in optimizer.state_dict()["state"].values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total


def estimate_checkpoint_bytes(trainable: list[torch.Tensor], optimizer_bytes: int | None = None) -> int:
    """Trainable tensors twice (current and best), the optimizer state (Adam: two moments when not yet
    known), and a margin for the small files."""
    weights = tensor_bytes(trainable)
    optimizer_part = optimizer_bytes if optimizer_bytes is not None else 2 * weights
    return 2 * weights + optimizer_part + MIB


# ------------------------------------------------------------------------------------------ RNG


def capture_rng() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python, numpy and torch generator states, as JSON-able values plus tensors."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    return plain, tensors


RngState = tuple[dict[str, Any], dict[str, torch.Tensor]]


def restore_rng(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


# ------------------------------------------------------------------------------------------ files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(4 * MIB), b""):
            h.update(block)
    return h.hexdigest()


def _cpu_contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}


def checkpoint_root(run_dir: Path | str) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def checkpoint_path(run_dir: Path | str, step: int) -> Path:
    return checkpoint_root(run_dir) / f"step-{step}"


def step_of(path: Path) -> int | None:
    match = _STEP_RE.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: Path | str) -> list[Path]:
    """``step-N`` directories, oldest first (complete or not: see :func:`load_checkpoint`)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=lambda p: step_of(p) or 0)


def _load_device(device: torch.device | str) -> str:
    """safetensors and torch.load take "cpu", never "cpu:0" (accelerate's device for each CPU process)."""
    device = torch.device(device)
    return "cpu" if device.type == "cpu" else str(device)


@dataclass
class Checkpoint:
    """A verified checkpoint; tensors are read on demand."""

    path: Path
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def state(self) -> dict[str, Any]:
        return self.meta["state"]

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.meta["fingerprint"]

    def trainable(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        return load_file(str(self.path / "trainable.safetensors"), device=_load_device(device))

    def best(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor] | None:
        path = self.path / "best.safetensors"
        return load_file(str(path), device=_load_device(device)) if path.is_file() else None

    @property
    def processes(self) -> int:
        """How many processes wrote this checkpoint (1 for checkpoints from before it was recorded)."""
        return int(self.state.get("processes", 1))

    def rng(self, rank: int = 0) -> RngState:
        """Process ``rank``'s generator states, as :func:`restore_rng` takes them."""
        tensors = load_file(str(self.path / "rng.safetensors"))
        if rank == 0:
            return self.meta["rng"], {k: v for k, v in tensors.items() if "/" not in k}
        prefix = f"rank{rank}/"
        mine = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        return self.meta["rng_other_ranks"][rank - 1], mine

    def torch_state(self, name: str, device: torch.device | str = "cpu") -> dict[str, Any]:
        return torch.load(self.path / name, map_location=_load_device(device), weights_only=True)


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    trainable: dict[str, torch.Tensor],
    best: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    config: dict[str, Any],
    fingerprint: dict[str, Any],
    keep: int,
    rng: list[RngState] | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step-{step}`` atomically, then delete all but the newest ``keep``.

    ``rng``: every process's generator states in rank order (default: this process's alone).
    """
    root = checkpoint_root(run_dir)
    previous = list_checkpoints(run_dir)
    last_size = directory_bytes(previous[-1]) if previous else 0
    estimate = max(
        last_size, estimate_checkpoint_bytes(list(trainable.values()), optimizer_state_bytes(optimizer))
    )
    resume_hint = (
        f"the last complete checkpoint is {previous[-1]}; free some space and run the same command to resume"
        if previous
        else "free some space or choose another --output"
    )
    ensure_free_space(root, int(estimate * 1.05) + MIB, f"checkpoint step-{step}", resume_hint)
    (rng_plain, rng_tensors), *other_ranks = rng or [capture_rng()]
    for rank, (_, tensors) in enumerate(other_ranks, start=1):
        rng_tensors = rng_tensors | {f"rank{rank}/{name}": t for name, t in tensors.items()}
    target = checkpoint_path(run_dir, step)
    try:
        with atomic_directory(target) as tmp:
            save_file(_cpu_contiguous(trainable), str(tmp / "trainable.safetensors"))
            if best is not None:
                save_file(_cpu_contiguous(best), str(tmp / "best.safetensors"))
            save_file(_cpu_contiguous(rng_tensors), str(tmp / "rng.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
            meta = {
                "format_version": FORMAT_VERSION,
                "step": step,
                "state": state,
                "rng": rng_plain,
                **({"rng_other_ranks": [plain for plain, _ in other_ranks]} if other_ranks else {}),
                "config": config,
                "fingerprint": fingerprint,
                "files": files,
            }
            (tmp / CHECKPOINT_MANIFEST).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskSpaceError(
                f"disk full while writing checkpoint step-{step} in {root}; {resume_hint}"
            ) from exc
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        if old != target:
            remove_tree(old)
    return target


def verify_checkpoint(path: Path) -> Checkpoint:
    """Parse and check a checkpoint directory; raises :class:`CheckpointError` naming what is wrong."""
    manifest = path / CHECKPOINT_MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint ({CHECKPOINT_MANIFEST} is missing)")
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{manifest}: corrupt ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{manifest}: unknown checkpoint format (expected version {FORMAT_VERSION})")
    for key in ("step", "state", "rng", "config", "fingerprint", "files"):
        if key not in meta:
            raise CheckpointError(f"{manifest}: lacks '{key}'")
    if meta["step"] != step_of(path):
        raise CheckpointError(f"{manifest}: records step {meta['step']} but the directory is {path.name}")
    for name, info in meta["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: '{name}' is missing")
        if file.stat().st_size != info["bytes"] or _sha256(file) != info["sha256"]:
            raise CheckpointError(f"{file}: size or checksum does not match; the file is damaged")
    for required in ("trainable.safetensors", "rng.safetensors", "optimizer.pt", "scheduler.pt"):
        if required not in meta["files"]:
            raise CheckpointError(f"{path}: '{required}' is not part of the checkpoint")
    return Checkpoint(path, meta)


def latest_checkpoint(run_dir: Path | str) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint that verifies, and a description of each newer one that did not."""
    problems: list[str] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return verify_checkpoint(path), problems
        except CheckpointError as exc:
            problems.append(str(exc))
    return None, problems


def clean_checkpoint_dir(run_dir: Path | str) -> list[Path]:
    """Remove temporaries a killed writer left in the checkpoints directory (only the run's owner may)."""
    return remove_stale_temporaries(checkpoint_root(run_dir))


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config as it is stored in JSON (tuples become lists), without the keys a resume may change."""
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k not in RESUME_IGNORED_KEYS}


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    saved_n, current_n = normalise_config(saved), normalise_config(current)
    keys = sorted(set(saved_n) | set(current_n))
    return [
        f"{k}: {saved_n.get(k)!r} in the checkpoint, {current_n.get(k)!r} now"
        for k in keys
        if saved_n.get(k) != current_n.get(k)
    ]


def file_fingerprint(path: Path | str | None) -> dict[str, Any] | None:
    """Size and sha256 of a data file, so a resume notices that the data changed under it."""
    if path is None:
        return None
    path = Path(path)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": _sha256(path)}
