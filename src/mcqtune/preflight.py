"""Checks that run before anything is loaded or written, so a run that cannot succeed fails in seconds.

- the output directory: not a file, inside a writable directory (probed by creating and removing a
  temporary file, which is also right for root and read-only mounts);
- free disk space for checkpoints and the artifact (sizes are computed from the trainable tensors);
- memory: the base model's parameter count is read from its safetensors headers (no weights loaded) and
  compared with the memory that is available now (``MemAvailable``, the cgroup limit, or free GPU
  memory); a model whose weights alone cannot fit is refused with the numbers, and an optimizer state or
  activation estimate that exceeds what is left after loading gives a warning (that part is an estimate);
- safetensors files are checked for a complete header and the exact length it announces, so a
  truncated or corrupt weights file is a one-line error instead of a deserialisation traceback;
- adapter directories (``--run``): a registered method in the manifest, safetensors weights only
  unless ``--allow-pickle``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mcqtune.errors import DiskSpaceError, ResourceError

log = logging.getLogger(__name__)

MIB = 2**20
GIB = 2**30
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_MAX_HEADER = 100 * MIB


def gib(n: float) -> str:
    """A size in GiB, or in MiB below 1 GiB so small numbers do not print as 0.00."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else mib(n)


def mib(n: float) -> str:
    return f"{n / MIB:,.1f} MiB"


# ------------------------------------------------------------------------------------------ disk


def _existing_ancestor(path: Path) -> Path:
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def free_bytes(path: Path | str) -> int:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    return shutil.disk_usage(_existing_ancestor(Path(path))).free


def ensure_free_space(path: Path | str, needed: int, what: str, hint: str = "") -> None:
    free = free_bytes(path)
    if free < needed:
        raise DiskSpaceError(
            f"not enough free disk space for {path}: {what} needs about {mib(needed)}, "
            f"only {mib(free)} is free" + (f"; {hint}" if hint else "")
        )


def check_output_dir(output: Path | str, flag: str = "--output") -> None:
    """Fail now, before any work, if ``output`` cannot be created or written."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ResourceError(f"{flag} {output}: exists and is not a directory")
    anchor = _existing_ancestor(output)
    if not anchor.is_dir():
        raise ResourceError(f"{flag} {output}: cannot be created, {anchor} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".mcqtune-write-test.", suffix=".tmp", dir=anchor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ResourceError(
            f"{flag} {output}: cannot write in {anchor} ({exc.strerror or exc}); choose a writable directory"
        ) from None


def check_output_file(path: Path | str, flag: str = "--output") -> None:
    """For single-file outputs (eval metrics): not a directory, and its directory is writable."""
    path = Path(path)
    if path.is_dir():
        raise ResourceError(f"{flag} {path}: is a directory; pass a file name such as metrics.json")
    check_output_dir(path.parent if str(path.parent) else Path("."), flag)


# ------------------------------------------------------------------------------------------ safetensors


def safetensors_header(path: Path, error: type[Exception] = ValueError) -> dict[str, Any]:
    """Read and check a safetensors header without loading tensors; ``error`` is raised when corrupt."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise error(f"{path}: corrupt safetensors file (only {size} bytes)")
            length = int.from_bytes(head, "little")
            if length > min(size - 8, _MAX_HEADER):
                raise error(f"{path}: corrupt safetensors file (header length {length} exceeds the file)")
            header = json.loads(handle.read(length).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise error(f"{path}: corrupt safetensors file (header is not valid JSON)") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(header, dict):
        raise error(f"{path}: corrupt safetensors file (header is not a mapping)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise error(f"{path}: corrupt safetensors file (bad entry for tensor '{name}')") from None
    if 8 + length + end != size:
        expected = 8 + length + end
        raise error(
            f"{path}: corrupt or truncated safetensors file ({size} bytes, header describes {expected})"
        )
    return header


def safetensors_numel(header: dict[str, Any]) -> int:
    return sum(math.prod(info["shape"]) for name, info in header.items() if name != "__metadata__")


def model_dir_summary(path: Path | str, error: type[Exception] = ValueError) -> dict[str, Any] | None:
    """Parameter count and architecture sizes of a local model directory, from headers only."""
    path = Path(path)
    if not path.is_dir():
        return None
    files = sorted(path.glob("*.safetensors"))
    if not files:
        return None
    n_params = sum(safetensors_numel(safetensors_header(f, error)) for f in files)
    config: dict[str, Any] = {}
    with contextlib.suppress(OSError, json.JSONDecodeError, UnicodeDecodeError):
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return {"n_params": n_params, "config": config if isinstance(config, dict) else {}}


# ------------------------------------------------------------------------------------------ memory


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device``: free GPU memory, or the smaller of the kernel's
    ``MemAvailable`` and what the cgroup limit leaves; None when unknown."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    candidates: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:
            candidates.append(max(limit - usage, 0))
    return min(candidates) if candidates else None


def check_weights_fit(n_params: int, bytes_per_param: float, device: torch.device, what: str) -> None:
    """Refuse when the weights alone exceed the memory available now: loading could only be OOM-killed."""
    needed = int(n_params * bytes_per_param)
    available = available_memory(device)
    if available is None or needed <= available:
        return
    where = "GPU memory" if device.type == "cuda" else "memory"
    raise ResourceError(
        f"{what} does not fit in {where}: {n_params:,} parameters x {bytes_per_param:g} bytes = "
        f"{gib(needed)}, but only {gib(available)} is available. Use a smaller model, a quantized method "
        "(--method qlora), or a machine with more memory"
    )


def activation_bytes(model_config: dict[str, Any], tokens: int) -> int:
    """A rough fp32 upper bound of what one forward+backward keeps per micro-batch.

    Per layer and token: about 34 x hidden values of activations (the usual transformer estimate);
    plus the logits, their log-softmax and gradient (3 x vocab per token).
    """
    hidden = int(model_config.get("hidden_size") or 0)
    layers = int(model_config.get("num_hidden_layers") or 0)
    vocab = int(model_config.get("vocab_size") or 0)
    return 4 * tokens * (34 * hidden * layers + 3 * vocab)


def check_training_fits(
    trainable_bytes: int,
    model_config: dict[str, Any],
    batch_size: int,
    max_length: int,
    device: torch.device,
) -> None:
    """After the base is loaded: gradients + Adam moments (3 x trainable) must fit; warn on activations."""
    available = available_memory(device)
    if available is None:
        return
    optimizer_part = 3 * trainable_bytes
    if optimizer_part > available:
        raise ResourceError(
            f"training does not fit in memory: gradients and optimizer state for the trainable parameters "
            f"need {gib(optimizer_part)} (3 x {gib(trainable_bytes)}), only {gib(available)} is left "
            "after loading the model. Train fewer parameters (a PEFT method such as lora) or use a machine "
            "with more memory"
        )
    activations = activation_bytes(model_config, batch_size * max_length)
    if optimizer_part + activations > available:
        log.warning(
            "training may run out of memory: about %s for optimizer state and up to %s of activations "
            "(batch %d x %d tokens) against %s available; lower --batch-size or --max-length if it fails",
            gib(optimizer_part),
            gib(activations),
            batch_size,
            max_length,
            gib(available),
        )


# ------------------------------------------------------------------------------------------ adapters


def check_adapter_dir(run_dir: Path | str, *, allow_pickle: bool = False) -> dict[str, Any]:
    """Validate a ``--run`` directory before the base model is loaded for it; returns its manifest."""
    from mcqtune.artifacts import ADAPTER_DIR, MANIFEST, ArtifactError, read_manifest
    from mcqtune.methods import METHODS

    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise ArtifactError(f"--run {run_dir}: is a file; pass the run directory that train wrote")
    manifest = read_manifest(run_dir)
    method = manifest["method"]
    if not isinstance(method, str) or method not in METHODS:
        raise ArtifactError(
            f"{run_dir / MANIFEST}: field 'method': unknown method {method!r}; "
            f"known: {', '.join(sorted(METHODS))}"
        )
    adapter = run_dir / ADAPTER_DIR
    tensors = sorted(adapter.rglob("*.safetensors"))
    pickled = sorted(p for p in adapter.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    for path in tensors:
        safetensors_header(path, ArtifactError)
    if pickled and not tensors:
        if not allow_pickle:
            raise ArtifactError(
                f"{adapter}: holds only pickled weights ({pickled[0].name}), which can execute code when "
                "loaded; pass --allow-pickle if you trust it"
            )
        log.warning("loading pickled adapter weights from %s because --allow-pickle was given", adapter)
    if not tensors and not pickled:
        raise ArtifactError(f"{adapter}: holds no weights (*.safetensors)")
    return manifest
