"""Adapter cache: device (registered in the model) <- CPU memory <- disk (safetensors, sha256 checked).

All served adapters are made resident at start when they fit (``max_device``); beyond that an LRU
evicts the least recently used adapters not needed by the batch at hand, keeping up to
``max_cpu`` of them as CPU tensors, so a later reload skips disk. Not thread-safe by design: the
backbone replica calls it only from its single model thread.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from madx.artifacts import (
    ArtifactError,
    check_backbone,
    confined,
    install_weights,
    load_adapter,
    read_artifact_bytes,
    read_manifest,
)
from madx.config import AdapterConfig
from madx.model import MadxModel

from .metrics import Metrics


@dataclass(frozen=True)
class Entry:
    name: str
    path: Path
    kind: str
    task_type: str | None
    language: str | None
    sha256: dict[str, str]  # every file of the artifact (for an admin path: as read when it was loaded)
    source: str  # "store" | "admin"
    trained_alone: bool = False  # a task adapter trained without a language adapter under it
    labels: tuple[str, ...] = ()  # a NER head's labels, known once the artifact has been read


def _trained_alone(e: dict) -> bool:
    """The store records the language adapter a task adapter was trained on; ``None`` there means it
    was trained alone (no key: unknown, served as a MAD-X stack as before)."""
    m = e.get("metrics") or {}
    return e.get("kind") == "task" and "trained_on_language_adapter" in m and m["trained_on_language_adapter"] is None


class AdapterCache:
    def __init__(self, model: MadxModel, store: Path, max_device: int, max_cpu: int, metrics: Metrics,
                 admin_roots: tuple[Path, ...] = ()) -> None:
        self.model, self.store, self.max_device, self.max_cpu, self.m = model, Path(store), max_device, max_cpu, metrics
        # directories an admin ``path`` may point into (the store always)
        self.admin_roots = tuple(Path(r).resolve() for r in (self.store, *admin_roots))
        self.entries: dict[str, Entry] = {}
        self.refused: dict[str, str] = {}  # name -> why (sha256 mismatch, shape, ...)
        # unloaded while rows that were admitted with them may still be queued: no new request routes to
        # them, but they stay loaded until ``collect`` finds no queued row that needs them
        self.retired: dict[str, Entry] = {}
        # a reload keeps the previous version under "<name>~<n>" for the rows admitted before it;
        # ``repin(name, kept_as)`` (set by the engine) points those queued rows at it
        self.repin = None
        self._versions = 0
        self.device: OrderedDict[str, None] = OrderedDict()  # resident, least recently used first
        self.cpu: OrderedDict[str, tuple[AdapterConfig, dict[str, torch.Tensor]]] = OrderedDict()
        if not self.store.is_dir():
            raise ArtifactError(f"adapter store {str(self.store)!r} is not a readable directory")
        try:
            manifest = read_manifest(self.store)["adapters"]
        except PermissionError as e:
            raise ArtifactError(f"adapter store {str(self.store)!r} is not readable ({e.strerror})") from None
        if not manifest:
            raise ArtifactError(f"adapter store {str(self.store)!r} has no adapters in manifest.json")
        for name, e in sorted(manifest.items()):
            try:
                self.entries[name] = self._store_entry(name, e)
            except ArtifactError as exc:
                self.refused[name] = str(exc)
        for name in list(self.entries):  # validate everything now; a bad adapter is refused, the rest serve
            try:
                self._from_disk(name)
            except (ArtifactError, OSError) as exc:
                self.refused[name] = str(exc)
                del self.entries[name]
        self.m.resident.labels(self.m.replica).set(len(self.device))

    # ------------------------------------------------------------------ queries
    def served(self, kind: str | None = None) -> dict[str, Entry]:
        return {n: e for n, e in self.entries.items() if kind is None or e.kind == kind}

    def resident(self, name: str) -> bool:
        return name in self.device

    # ------------------------------------------------------------------ residency
    def ensure(self, names: set[str]) -> None:
        """Make ``names`` resident (they must be served), evicting others if over capacity."""
        for name in sorted(names):
            if name in self.device:
                self.device.move_to_end(name)
                self.m.cache.labels(self.m.replica, "hit", "device").inc()
            elif name in self.cpu:
                t0 = time.perf_counter()
                cfg, tensors = self.cpu.pop(name)
                self._evict(keep=names, room_for=1)
                install_weights(self.model, cfg, tensors, where=f"cpu cache:{name}")
                self.device[name] = None
                self.m.cache.labels(self.m.replica, "miss", "cpu").inc()
                self.m.load_seconds.labels(self.m.replica, "cpu").observe(time.perf_counter() - t0)
            else:
                self.m.cache.labels(self.m.replica, "miss", "disk").inc()
                self._from_disk(name, keep=names)
        self.m.resident.labels(self.m.replica).set(len(self.device))

    def _from_disk(self, name: str, keep: set[str] | None = None) -> None:
        e = self.entries.get(name) or self.retired[name]
        t0 = time.perf_counter()
        self._evict(keep=keep or {name}, room_for=1)
        cfg = load_adapter(self.model, e.path, name=name, expected_sha256=e.sha256)
        if cfg.head is not None and e.labels != tuple(cfg.head.labels):  # the entry remembers its labels
            e = dataclasses.replace(e, labels=tuple(cfg.head.labels))
            (self.entries if self.entries.get(name) is not None else self.retired)[name] = e
        self.device[name] = None
        self.m.load_seconds.labels(self.m.replica, "disk").observe(time.perf_counter() - t0)

    def _evict(self, keep: set[str], room_for: int) -> None:
        while len(self.device) + room_for > self.max_device:
            victim = next((n for n in self.device if n not in keep), None)
            if victim is None:
                raise RuntimeError(f"one batch needs {len(keep)} adapters but only {self.max_device} fit on the device "
                                   f"(cache.max_device_adapters)")
            self._unload(victim)

    def _unload(self, name: str) -> None:
        if name not in self.device:
            return
        del self.device[name]
        if self.max_cpu > 0:
            state = {k: v.detach().to("cpu").clone() for k, v in self.model.adapters[name].state_dict().items()}
            self.cpu[name] = (self.model.configs[name], state)
            while len(self.cpu) > self.max_cpu:
                self.cpu.popitem(last=False)
        self.model.remove_adapter(name)

    def _store_entry(self, name: str, e: dict) -> Entry:
        if not isinstance(e.get("sha256"), dict) or not e["sha256"]:
            raise ArtifactError(f"adapter {name!r}: the manifest lists no sha256 for it; refusing it")
        return Entry(name, confined(self.store, e["path"]), e["kind"], e.get("task_type"),
                     name if e["kind"] == "language" else None, dict(e["sha256"]), "store", _trained_alone(e))

    # ------------------------------------------------------------------ admin
    def admin_path(self, path: str) -> Path:
        """An admin ``path`` inside an allowed root. Outside, the answer is the same whether or not the
        directory exists (nothing about the file system is disclosed)."""
        if "\0" in path:  # the OS cannot even look it up (resolve() would raise ValueError)
            raise ArtifactError("path contains a NUL character; it cannot name a directory")
        if len(path) > 1024:
            raise ArtifactError(f"path has {len(path)} characters; at most 1024")
        p = Path(path)
        try:
            resolved = (self.store / p).resolve() if not p.is_absolute() else p.resolve()
        except (OSError, RuntimeError) as e:  # a name too long for the OS, a symlink loop
            raise ArtifactError(f"path cannot be resolved ({getattr(e, 'strerror', None) or e})") from None
        if not any(resolved.is_relative_to(r) for r in self.admin_roots):
            raise ArtifactError("path is outside the directories admin loads may read (the adapter store and "
                                "admin_roots); copy the artifact there first")
        return resolved

    def admin_load(self, name: str, path: str | None, validate=None) -> Entry:
        """Serve (or reload) ``name`` from its store entry or from an artifact directory.

        All or nothing: the new artifact is read once, verified, parsed and checked (``validate(entry,
        cfg)`` raises to refuse it) before the current version is touched; if installing it still
        fails, the previous version is put back from memory, never re-read from disk."""
        if path is not None:
            d = self.admin_path(path)
            ab = read_artifact_bytes(d)
            sha = ab.sha256()
        else:
            m = read_manifest(self.store)["adapters"]
            if name not in m:
                raise KeyError(f"adapter {name!r} is not in the store's manifest.json and no path was given; "
                               f"the store has: {sorted(m)}")
            base = self._store_entry(name, m[name])
            d, sha = base.path, base.sha256
            ab = read_artifact_bytes(d)
            ab.verify(sha)
        meta, cfg, tensors = ab.parse()
        check_backbone(self.model, meta, cfg, d)
        if cfg.name != name:
            cfg = type(cfg)(name, cfg.kind, cfg.bottleneck, cfg.invertible, cfg.head)
        source, alone = ("admin", False) if path is not None else ("store", base.trained_alone)
        entry = Entry(name, d, cfg.kind, cfg.head.task_type if cfg.head else None,
                      name if cfg.kind == "language" else None, sha, source, alone,
                      tuple(cfg.head.labels) if cfg.head else ())
        if validate is not None:
            validate(entry, cfg)
        old = self.entries.get(name) or self.retired.get(name)
        kept_as, old_state = None, None
        if old is not None and name in self.model.configs and self.repin is not None and name in self.entries:
            # the verified old version stays loaded under another name until no row admitted before
            # this reload needs it (collect), so those rows finish with the version they were routed to
            # the name stays served meanwhile: a request routed while the new weights go in runs them
            self._versions += 1
            kept_as = f"{name}~{self._versions}"
            self._rename(name, kept_as)
            self.retired[kept_as] = self.entries[name]
        else:
            if old is not None and name in self.model.configs:  # the verified in-memory copy, for a rollback
                old_state = (self.model.configs[name],
                             {k: v.detach().clone() for k, v in self.model.adapters[name].state_dict().items()})
            elif old is not None and name in self.cpu:
                old_state = self.cpu[name]
            # drop the old weights, not the entry: requests keep routing to the name
            self.retired.pop(name, None)
            self._unload(name)
            self.cpu.pop(name, None)
        try:
            self._evict(keep={name, *([kept_as] if kept_as else [])}, room_for=1)
            install_weights(self.model, cfg, tensors, where=str(d))
        except Exception:
            if kept_as is not None:  # undo: the old version is the served one again
                self.entries[name] = self.retired.pop(kept_as)
                self._rename(kept_as, name)
            elif old is None:
                self.entries.pop(name, None)
            elif old is not None:  # keep serving the previous version, from memory
                self.entries[name] = old
                if old_state is not None:
                    install_weights(self.model, old_state[0], old_state[1], where=f"previous {name}")
                    self.device[name] = None
            raise
        if kept_as is not None:
            self.repin(name, kept_as)
        self.device[name] = None
        self.entries[name] = entry
        self.refused.pop(name, None)
        self.m.resident.labels(self.m.replica).set(len(self.device))
        return entry

    def _rename(self, name: str, new: str) -> None:
        self.model.adapters[new] = self.model.adapters.pop(name)
        self.model.configs[new] = dataclasses.replace(self.model.configs.pop(name), name=new)
        if name in self.device:
            self.device[new] = None
            del self.device[name]

    def admin_unload(self, name: str, missing_ok: bool = False, drain: bool = False) -> None:
        """Stop serving ``name``. With ``drain`` its weights stay until ``collect`` sees that no queued
        row needs them (rows admitted before the unload finish with the adapter they were routed to)."""
        if name not in self.entries:
            if name in self.retired and not drain:  # a reload replaces a draining adapter at once
                self.retired.pop(name)
                self._unload(name)
                self.cpu.pop(name, None)
                return
            if missing_ok:
                return
            raise KeyError(f"adapter {name!r} is not served; served: {sorted(self.entries)}")
        e = self.entries.pop(name)
        if drain and (name in self.device or name in self.cpu):
            self.retired[name] = e
            return
        self._unload(name)
        self.cpu.pop(name, None)
        self.m.resident.labels(self.m.replica).set(len(self.device))

    def collect(self, in_use) -> None:
        """Unload the draining adapters that no queued row needs any more. ``in_use`` is a function,
        called here on the model thread: a set computed earlier could miss rows a reload has since
        re-pointed at the version it keeps."""
        needed = in_use() if callable(in_use) else in_use
        for name in [n for n in self.retired if n not in needed]:
            del self.retired[name]
            self._unload(name)
            self.cpu.pop(name, None)
        self.m.resident.labels(self.m.replica).set(len(self.device))
