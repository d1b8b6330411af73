"""Named artifacts the server answers with: fixed ones (``--run NAME=DIR``, loaded at start-up) and,
with ``--run-dir DIR``, any run directory directly under DIR, loaded on first use and unloaded least
recently used first so at most ``max_loaded`` of them are held at once.

Every method here runs on the batcher's single worker thread (attach/detach/score never overlap), so
the registry needs no lock of its own; :meth:`check_name` is the only call made from request handlers
and touches no model.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Collection
from pathlib import Path

from mcqtune.artifacts import MANIFEST
from mcqtune.errors import ArtifactError, ConfigError, UnknownArtifactError
from mcqtune.serving import DEFAULT_MAX_LOADED
from mcqtune.serving.engine import ArtifactInfo, Engine

# An artifact name is one path component: letters, digits, '.', '_', '-' (no '/', no '..').
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")


def parse_named_paths(pairs: list[str] | None, flag: str = "--run") -> dict[str, Path]:
    """``["lora=runs/lora", ...]`` -> ``{"lora": Path("runs/lora")}``; names are checked and unique."""
    named: dict[str, Path] = {}
    for pair in pairs or []:
        name, sep, directory = pair.partition("=")
        if not sep or not directory:
            raise ConfigError(f"{flag} expects NAME=PATH, got '{pair}'")
        if not NAME_PATTERN.match(name) or name == "..":
            raise ConfigError(f"{flag} {pair}: name '{name}' must be letters, digits, '.', '_' or '-'")
        if name in named:
            raise ConfigError(f"{flag} {pair}: name '{name}' is given twice")
        named[name] = Path(directory)
    return named


class ArtifactRegistry:
    def __init__(
        self,
        engine: Engine,
        named: dict[str, Path] | None = None,
        adapter_dir: Path | None = None,
        max_loaded: int = DEFAULT_MAX_LOADED,
    ) -> None:
        if max_loaded < 1:
            raise ConfigError(f"--max-loaded must be at least 1, got {max_loaded}")
        if adapter_dir is not None and not Path(adapter_dir).is_dir():
            raise ConfigError(f"--run-dir {adapter_dir}: not a directory")
        self.engine = engine
        self.named = dict(named or {})
        self.adapter_dir = Path(adapter_dir).resolve() if adapter_dir is not None else None
        self.max_loaded = max_loaded
        self.pinned: dict[str, ArtifactInfo] = {}
        self.lazy: OrderedDict[str, ArtifactInfo] = OrderedDict()  # least recently used first

    def load_named(self) -> None:
        """Attach every ``--run NAME=DIR``; the first that fails stops start-up naming it."""
        for name, directory in self.named.items():
            try:
                self.pinned[name] = self.engine.attach(name, directory)
            except (ArtifactError, OSError) as exc:
                raise ArtifactError(f"artifact '{name}' ({directory}) could not be loaded: {exc}") from None

    def _lazy_dir(self, name: str) -> Path | None:
        """The run directory for ``name`` under --run-dir, never a path outside it."""
        if self.adapter_dir is None or not NAME_PATTERN.match(name) or name == "..":
            return None
        candidate = (self.adapter_dir / name).resolve()
        if candidate.parent != self.adapter_dir or not (candidate / MANIFEST).is_file():
            return None
        return candidate

    def check_name(self, name: str | None) -> None:
        """Raise :class:`UnknownArtifactError` unless ``name`` is servable (None: the base zero-shot)."""
        if name is None or name in self.pinned or name in self.lazy or self._lazy_dir(name) is not None:
            return
        raise UnknownArtifactError(f"unknown artifact '{name}'; available: {', '.join(self.available())}")

    def available(self) -> list[str]:
        names = set(self.pinned)
        if self.adapter_dir is not None:
            names |= {p.name for p in self.adapter_dir.iterdir() if self._lazy_dir(p.name) is not None}
        return sorted(names)

    def loadable_together(self, names: list[str | None]) -> list[list[str | None]]:
        """Split ``names`` into runs that fit in memory at once (at most ``max_loaded`` lazy ones each)."""
        chunks: list[list[str | None]] = [[]]
        lazy = 0
        for name in names:
            is_lazy = name is not None and name not in self.pinned
            if is_lazy and lazy == self.max_loaded:
                chunks.append([])
                lazy = 0
            chunks[-1].append(name)
            lazy += is_lazy
        return chunks

    def ensure(self, name: str | None, keep: Collection[str | None] = ()) -> None:
        """Make ``name`` attached, loading it lazily; the least recently used artifact not in ``keep``
        is unloaded first when ``max_loaded`` are held."""
        self.check_name(name)
        if name is None or name in self.pinned:
            return
        if name in self.lazy:
            self.lazy.move_to_end(name)
            return
        while len(self.lazy) >= self.max_loaded:
            evicted = next(n for n in self.lazy if n not in keep)
            del self.lazy[evicted]
            self.engine.detach(evicted)
        directory = self._lazy_dir(name)
        assert directory is not None  # check_name passed
        try:
            self.lazy[name] = self.engine.attach(name, directory)
        except (ArtifactError, OSError) as exc:
            raise ArtifactError(f"artifact '{name}' could not be loaded: {exc}") from None

    def loaded(self) -> list[ArtifactInfo]:
        return [self.engine.base_info(), *self.pinned.values(), *self.lazy.values()]
