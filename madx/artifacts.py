"""Adapter artifacts on disk: our format, the adapter store and its sha256 manifest.

Artifact directory::

    <name>/adapter_config.json   format, kind, backbone identity, module configs, labels, training metadata
    <name>/adapter.safetensors   tensors named as MadxModel.adapters[<name>].state_dict()

Store directory::

    manifest.json                {"format": ..., "adapters": {name: {"path", "sha256": {file: hex}, ...}}}
    <name>/...                   one artifact per adapter

Only safetensors is ever read here; pickle files are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from .config import AdapterConfig, BottleneckConfig, HeadConfig, InvertibleConfig
from .model import MadxModel

ARTIFACT_FORMAT = "madx-serve/adapter@1"
STORE_FORMAT = "madx-serve/store@1"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
MANIFEST_FILE = "manifest.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class ArtifactError(ValueError):
    """An adapter artifact or store is missing, malformed, corrupted or incompatible."""


# ---------------------------------------------------------------------- config <-> json
def config_to_json(cfg: AdapterConfig) -> dict[str, Any]:
    return {
        "name": cfg.name,
        "kind": cfg.kind,
        "bottleneck": {**asdict(cfg.bottleneck), "leave_out": list(cfg.bottleneck.leave_out)},
        "invertible": asdict(cfg.invertible) if cfg.invertible else None,
        "head": {"task_type": cfg.head.task_type, "labels": list(cfg.head.labels)} if cfg.head else None,
    }


def config_from_json(d: dict[str, Any], where: str = "adapter_config.json") -> AdapterConfig:
    try:
        return AdapterConfig(
            name=d["name"],
            kind=d["kind"],
            bottleneck=BottleneckConfig(**{**d["bottleneck"], "leave_out": tuple(d["bottleneck"].get("leave_out", ()))}),
            invertible=InvertibleConfig(**d["invertible"]) if d.get("invertible") else None,
            head=HeadConfig(d["head"]["task_type"], tuple(d["head"]["labels"])) if d.get("head") else None,
        )
    except KeyError as e:
        raise ArtifactError(f"{where}: missing field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{where}: {e}") from None


def backbone_identity(model: MadxModel) -> dict[str, Any]:
    return {"name": model.backbone_name, "hidden_size": model.hidden_size, "num_layers": model.num_layers}


# ---------------------------------------------------------------------- single artifact
def save_adapter(model: MadxModel, name: str, directory: str | Path,
                 training: dict[str, Any] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write one loaded adapter as an artifact directory (atomic per file). ``dtype`` (e.g.
    float16 for shipped defaults) only changes storage; loading casts to the model's dtype."""
    cfg = model._require(name)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"format": ARTIFACT_FORMAT, **config_to_json(cfg), "backbone": backbone_identity(model),
            "training": training or {}}
    tensors = {k: v.detach().to("cpu", dtype=dtype or v.dtype).contiguous()
               for k, v in model.adapters[name].state_dict().items()}
    _atomic(d / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": ARTIFACT_FORMAT}))
    _atomic(d / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n"))
    return d


def _atomic(dest: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass(frozen=True)
class ArtifactBytes:
    """Every file of an artifact directory, read once. Hashes and parsing use these same bytes, so
    what was verified is what is loaded (no second read of a file that may have changed)."""

    directory: Path
    files: dict[str, bytes]

    def sha256(self) -> dict[str, str]:
        return {f: hashlib.sha256(b).hexdigest() for f, b in sorted(self.files.items())}

    def verify(self, expected: dict[str, str] | None) -> None:
        """With ``expected`` (the manifest's hashes): every file is listed, every listed file is
        here, and every hash matches; an empty map is refused, never skipped."""
        if expected is None:
            return
        if not expected:
            raise ArtifactError(f"{self.directory}: the manifest lists no sha256 for this adapter; refusing it")
        unlisted = sorted(set(self.files) - set(expected))
        if unlisted:
            raise ArtifactError(f"{self.directory}: files {unlisted} are not in the manifest's sha256 list; "
                                f"refusing this adapter")
        got = self.sha256()
        for fname, want in sorted(expected.items()):
            have = got.get(fname, "missing")
            if have != want:
                raise ArtifactError(f"{self.directory / fname}: sha256 {have} does not match the store manifest "
                                    f"({want}); refusing this adapter")

    def parse(self) -> tuple[dict[str, Any], AdapterConfig, dict[str, torch.Tensor]]:
        d = self.directory
        try:
            meta = json.loads(self.files[CONFIG_FILE])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{d / CONFIG_FILE}: invalid JSON ({e})") from None
        except RecursionError:
            raise ArtifactError(f"{d / CONFIG_FILE}: JSON nested too deeply to be an adapter config") from None
        if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            hint = (" (this looks like an AdapterHub adapter: convert it with `madx import-adapterhub`)"
                    if isinstance(meta, dict) and "config" in meta and "model_class" in meta else "")
            raise ArtifactError(f"{d / CONFIG_FILE}: format {got!r} is not {ARTIFACT_FORMAT!r}{hint}")
        cfg = config_from_json(meta, str(d / CONFIG_FILE))
        if WEIGHTS_FILE not in self.files:
            raise ArtifactError(f"{d}: missing {WEIGHTS_FILE}")
        try:
            tensors = load_safetensors(self.files[WEIGHTS_FILE])
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise ArtifactError(f"{d / WEIGHTS_FILE}: not a readable safetensors file ({e})") from None
        return meta, cfg, tensors


def _read_regular(path: Path, limit: int) -> bytes:
    """A regular file's bytes, or an ArtifactError. Opened non-blocking and checked with fstat, so a
    FIFO or device never blocks the caller and a swapped-in special file is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise ArtifactError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{path}: not a regular file; refusing it")
        if st.st_size > limit:
            raise ArtifactError(f"{path}: {st.st_size} bytes is over the {limit}-byte limit for an artifact file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit + 1)
    finally:
        os.close(fd)


MAX_FILE_BYTES = {CONFIG_FILE: 1 << 20, WEIGHTS_FILE: 1 << 28}  # 1 MiB of JSON; 256 MiB of weights
MAX_WEIGHT = 1e4  # trained adapters stay far below (the shipped ones: |w| < 0.3); larger overflows fp16/bf16
MAX_BOTTLENECK = 8  # bottleneck units per hidden unit (reduction_factor >= 1/8)


def read_artifact_bytes(directory: str | Path) -> ArtifactBytes:
    d = Path(directory)
    if not d.is_dir():
        raise ArtifactError(f"adapter directory {str(d)!r} does not exist")
    try:
        names = sorted(p.name for p in d.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise ArtifactError(f"adapter directory {str(d)!r} cannot be listed ({e.strerror})") from None
    pickles = [n for n in names if Path(n).suffix in PICKLE_SUFFIXES]
    if WEIGHTS_FILE not in names and pickles:
        raise ArtifactError(
            f"{d}: only pickle weights ({', '.join(pickles)}); pickle is never loaded. Convert once with "
            f"`madx import-adapterhub {d} --allow-pickle ...` (trusted files only)"
        )
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if required not in names:
            raise ArtifactError(f"{d}: missing {required}")
    extra = [n for n in names if n not in MAX_FILE_BYTES]
    if extra:  # refused before anything is read: an artifact is exactly these two files
        shown = ", ".join(repr(n[:60]) for n in extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise ArtifactError(f"{d}: {shown} are not part of an adapter artifact (only {CONFIG_FILE} and {WEIGHTS_FILE}); "
                            f"remove them")
    return ArtifactBytes(d, {n: _read_regular(d / n, MAX_FILE_BYTES[n]) for n in names})


def read_artifact(directory: str | Path) -> tuple[dict[str, Any], AdapterConfig]:
    meta, cfg, _ = read_artifact_bytes(directory).parse()
    return meta, cfg


def check_backbone(model: MadxModel, meta: dict[str, Any], cfg: AdapterConfig, where: str | Path) -> None:
    """The artifact fits the loaded backbone: its sizes, the layers it leaves out, its bottleneck."""
    bb = meta.get("backbone", {}) if isinstance(meta.get("backbone"), dict) else {}
    for key, have in (("hidden_size", model.hidden_size), ("num_layers", model.num_layers)):
        if bb.get(key) != have:
            raise ArtifactError(
                f"{where}: adapter {cfg.name!r} was made for {key}={bb.get(key)} "
                f"(backbone {bb.get('name')!r}); the loaded backbone {model.backbone_name!r} has {key}={have}"
            )
    bad = [i for i in cfg.bottleneck.leave_out if not 0 <= i < model.num_layers]
    if bad:
        raise ArtifactError(f"{where}: leave_out {bad} names layers the backbone does not have (0..{model.num_layers - 1})")
    for part, rf in (("bottleneck", cfg.bottleneck.reduction_factor),
                     ("invertible", cfg.invertible.reduction_factor if cfg.invertible else None)):
        if rf is not None and rf < 1 / MAX_BOTTLENECK:
            raise ArtifactError(f"{where}: {part} reduction_factor {rf!r} would make {int(model.hidden_size // rf)} units "
                                f"per layer; it must be >= {1 / MAX_BOTTLENECK} (at most {MAX_BOTTLENECK} x hidden size)")


def load_adapter(model: MadxModel, directory: str | Path, name: str | None = None,
                 expected_sha256: dict[str, str] | None = None) -> AdapterConfig:
    """Validate an artifact against ``model`` and register it (under ``name`` if given). Each file is
    read once; the hashes are checked and the config and weights parsed from those same bytes."""
    ab = read_artifact_bytes(directory)
    ab.verify(expected_sha256)
    meta, cfg, tensors = ab.parse()
    check_backbone(model, meta, cfg, ab.directory)
    if name is not None and name != cfg.name:
        cfg = AdapterConfig(name, cfg.kind, cfg.bottleneck, cfg.invertible, cfg.head)
    install_weights(model, cfg, tensors, where=str(ab.directory))
    return cfg


def confined(root: str | Path, relative: str | Path) -> Path:
    """``root / relative``, refused when it resolves outside ``root`` ('../', absolute paths, links)."""
    base = Path(root).resolve()
    p = (base / relative).resolve()
    if not p.is_relative_to(base):
        raise ArtifactError(f"path {str(relative)!r} leaves the store; manifest paths must stay inside it")
    return p


def install_weights(model: MadxModel, cfg: AdapterConfig, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Build the adapter's modules, check every tensor name and shape, then register it."""
    if cfg.name in model.configs:
        raise ArtifactError(f"{where}: adapter {cfg.name!r} is already loaded")
    mod = model.add_adapter(cfg)
    try:
        expected = mod.state_dict()
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise ArtifactError(
                f"{where}: adapter {cfg.name!r} tensors do not match its config: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
            )
        for k, want in expected.items():
            if tuple(tensors[k].shape) != tuple(want.shape):
                raise ArtifactError(
                    f"{where}: tensor {k!r} of adapter {cfg.name!r} has shape {tuple(tensors[k].shape)}, "
                    f"the backbone {model.backbone_name!r} (hidden {model.hidden_size}) needs {tuple(want.shape)}"
                )
            t = tensors[k]
            if t.is_floating_point() and t.numel():
                if not bool(torch.isfinite(t).all()):
                    raise ArtifactError(f"{where}: tensor {k!r} of adapter {cfg.name!r} has values that are not finite "
                                        f"(NaN or infinity); refusing it")
                top = float(t.abs().max())
                if top > MAX_WEIGHT:
                    raise ArtifactError(f"{where}: tensor {k!r} of adapter {cfg.name!r} has values above {MAX_WEIGHT:g} in "
                                        f"magnitude (largest {top:.3g}); a trained adapter's weights are far smaller")
        mod.load_state_dict({k: tensors[k].to(expected[k].dtype) for k in expected})
    except Exception:
        model.remove_adapter(cfg.name)
        raise


# ---------------------------------------------------------------------- store
def read_manifest(store: str | Path) -> dict[str, Any]:
    p = Path(store) / MANIFEST_FILE
    if not p.exists():
        return {"format": STORE_FORMAT, "adapters": {}}
    try:
        m = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{p}: invalid JSON ({e})") from None
    if m.get("format") != STORE_FORMAT:
        raise ArtifactError(f"{p}: format {m.get('format')!r} is not {STORE_FORMAT!r}")
    return m


def update_manifest(store: str | Path, change) -> dict[str, Any]:
    """Read, ``change(manifest)`` in place, and write the store's manifest atomically, under an
    exclusive lock on ``<store>/.manifest.lock``: two writers (a training run adding its adapter, a
    script adding route evidence) each see the other's change instead of overwriting it."""
    import fcntl

    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    with open(store / ".manifest.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            m = read_manifest(store)
            change(m)
            _atomic(store / MANIFEST_FILE, lambda p: Path(p).write_text(json.dumps(m, indent=2, sort_keys=True) + "\n"))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return m


def add_to_store(store: str | Path, artifact_dir: str | Path, extra: dict[str, Any] | None = None) -> dict:
    """Record an artifact that lies inside ``store`` in its manifest, with sha256 of each file."""
    store, art = Path(store), Path(artifact_dir)
    ab = read_artifact_bytes(art)
    meta, cfg, _ = ab.parse()
    entry = {
        "path": os.path.relpath(art, store),
        "kind": cfg.kind,
        "task_type": cfg.head.task_type if cfg.head else None,
        "backbone": meta.get("backbone", {}),
        "sha256": ab.sha256(),  # every file of the artifact
        **(extra or {}),
    }
    update_manifest(store, lambda m: m["adapters"].__setitem__(cfg.name, entry))
    return entry


def save_to_store(model: MadxModel, name: str, store: str | Path, training: dict[str, Any] | None = None,
                  extra: dict[str, Any] | None = None, dtype: torch.dtype | None = None) -> dict:
    art = save_adapter(model, name, Path(store) / name, training, dtype)
    return add_to_store(store, art, extra)


def load_store(model: MadxModel, store: str | Path, names: list[str] | None = None,
               strict: bool = True) -> dict[str, str]:
    """Load adapters listed in the manifest, verifying sha256. Returns {name: error} for refusals.

    With ``strict`` the first refusal raises; otherwise a bad adapter is skipped and the rest load.
    """
    m = read_manifest(store)
    if not m["adapters"]:
        raise ArtifactError(f"adapter store {str(store)!r} has no adapters (no {MANIFEST_FILE} entries)")
    wanted = names if names is not None else sorted(m["adapters"])
    errors: dict[str, str] = {}
    for name in wanted:
        entry = m["adapters"].get(name)
        try:
            if entry is None:
                raise ArtifactError(f"adapter {name!r} is not in {store}/{MANIFEST_FILE}; has: {sorted(m['adapters'])}")
            load_adapter(model, confined(store, entry["path"]), expected_sha256=entry["sha256"])
        except ArtifactError as e:
            if strict:
                raise
            errors[name] = str(e)
    return errors
