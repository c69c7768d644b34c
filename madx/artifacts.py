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
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

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
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def read_artifact(directory: str | Path) -> tuple[dict[str, Any], AdapterConfig]:
    d = Path(directory)
    if not d.is_dir():
        raise ArtifactError(f"adapter directory {str(d)!r} does not exist")
    pickles = sorted(p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not (d / WEIGHTS_FILE).exists() and pickles:
        raise ArtifactError(
            f"{d}: only pickle weights ({', '.join(pickles)}); pickle is never loaded. Convert once with "
            f"`madx import-adapterhub {d} --allow-pickle ...` (trusted files only)"
        )
    cfg_path = d / CONFIG_FILE
    if not cfg_path.exists():
        raise ArtifactError(f"{d}: missing {CONFIG_FILE}")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{cfg_path}: invalid JSON ({e})") from None
    if meta.get("format") != ARTIFACT_FORMAT:
        hint = (" (this looks like an AdapterHub adapter: convert it with `madx import-adapterhub`)"
                if "config" in meta and "model_class" in meta else "")
        raise ArtifactError(f"{cfg_path}: format {meta.get('format')!r} is not {ARTIFACT_FORMAT!r}{hint}")
    return meta, config_from_json(meta, str(cfg_path))


def load_adapter(model: MadxModel, directory: str | Path, name: str | None = None,
                 expected_sha256: dict[str, str] | None = None) -> AdapterConfig:
    """Validate an artifact against ``model`` and register it (under ``name`` if given)."""
    d = Path(directory)
    meta, cfg = read_artifact(d)
    if expected_sha256:
        for fname, want in expected_sha256.items():
            got = sha256_file(d / fname) if (d / fname).exists() else "missing"
            if got != want:
                raise ArtifactError(
                    f"{d / fname}: sha256 {got} does not match the store manifest ({want}); refusing this adapter"
                )
    bb = meta.get("backbone", {})
    for key, have in (("hidden_size", model.hidden_size), ("num_layers", model.num_layers)):
        if bb.get(key) != have:
            raise ArtifactError(
                f"{d}: adapter {cfg.name!r} was made for {key}={bb.get(key)} "
                f"(backbone {bb.get('name')!r}); the loaded backbone {model.backbone_name!r} has {key}={have}"
            )
    if name is not None and name != cfg.name:
        cfg = AdapterConfig(name, cfg.kind, cfg.bottleneck, cfg.invertible, cfg.head)
    if not (d / WEIGHTS_FILE).exists():
        raise ArtifactError(f"{d}: missing {WEIGHTS_FILE}")
    tensors = load_file(str(d / WEIGHTS_FILE))
    install_weights(model, cfg, tensors, where=str(d))
    return cfg


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


def add_to_store(store: str | Path, artifact_dir: str | Path, extra: dict[str, Any] | None = None) -> dict:
    """Record an artifact that lies inside ``store`` in its manifest, with sha256 of each file."""
    store, art = Path(store), Path(artifact_dir)
    meta, cfg = read_artifact(art)
    entry = {
        "path": os.path.relpath(art, store),
        "kind": cfg.kind,
        "task_type": cfg.head.task_type if cfg.head else None,
        "backbone": meta.get("backbone", {}),
        "sha256": {f: sha256_file(art / f) for f in (CONFIG_FILE, WEIGHTS_FILE)},
        **(extra or {}),
    }
    m = read_manifest(store)
    m["adapters"][cfg.name] = entry
    store.mkdir(parents=True, exist_ok=True)
    _atomic(store / MANIFEST_FILE, lambda p: Path(p).write_text(json.dumps(m, indent=2, sort_keys=True) + "\n"))
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
            load_adapter(model, Path(store) / entry["path"], expected_sha256=entry["sha256"])
        except ArtifactError as e:
            if strict:
                raise
            errors[name] = str(e)
    return errors
