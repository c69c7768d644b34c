"""Ship a store: copy the served adapters of a training store, under their served names, into a store
the server loads (``madx/default_store`` by default).

Weights are stored as float16 (half the size; loading casts back to the model's dtype). Each entry
keeps its training metrics, data provenance, training config and the name it was trained as; the
detector profiles of the shipped languages and of the languages the evidence routes, and the frozen
MLM head, are copied. The routing evidence
of the training store is carried over with the routes that need an adapter the store leaves out
moved to ``not_served`` (the server never picks them), and the task adapters it was measured with
mapped to their served names. The new store is built beside the destination and swapped in whole.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..artifacts import load_store, read_artifact, read_manifest, save_to_store, update_manifest
from ..config import AdapterConfig
from ..langid import load_profiles, save_profile
from ..model import MadxModel
from .masked_lm import MLM_HEAD_DIR


def served_routing(routing: dict, languages: set[str], served_as: Mapping[str, str]) -> dict:
    """The training store's route evidence as the shipped store serves it (see the module docstring).
    ``served_as``: {served name: trained name} of the shipped task adapters; a route naming its task
    adapter (``madx@ner-madx-s0``) is renamed to the served name (``madx@ner-en``), or moved to
    ``not_served`` when that adapter is not shipped."""
    from serving.routing import RouteError, split_adapter, stacks_for

    source = routing.get("source_language", "en")
    by_source = {v: k for k, v in served_as.items()}

    def renamed(route: str) -> str | None:
        base, named = split_adapter(route)
        if named is None:
            return route
        return f"{base}@{by_source[named]}" if named in by_source else None

    evidence = {}
    for lang, tasks in routing["evidence"].items():
        for task, ev in tasks.items():
            ok, gone, names = {}, {}, {}
            for route, score in ev["scores"].items():
                try:
                    served = renamed(route)
                    if served is None:
                        raise RouteError(route)
                    stacks_for(served, lang, task, source, languages)
                    ok[served], names[route] = score, served
                except RouteError:
                    gone[route] = score
            vs = {names[r]: v for r, v in (ev.get("vs_task_only") or {}).items() if r in names}
            evidence.setdefault(lang, {})[task] = {**ev, "scores": ok, **({"vs_task_only": vs} if "vs_task_only" in ev else {}),
                                                   **({"not_served": gone} if gone else {})}
    measured = routing.get("task_adapters", {})
    out = {k: v for k, v in routing.items() if k not in ("command", "adapters")}
    out.update({"evidence": evidence, "measured_with": measured,
                "task_adapters": {t: {k: [by_source.get(x, x) for x in n] if isinstance(n, list) else by_source.get(n, n)
                                      for k, n in names.items()} for t, names in measured.items()}})
    for d in (out.get("default") or {}).values():
        d["scores"] = {r: v for r, v in d["scores"].items() if r != "english" or source in languages}
        if d["route"] not in d["scores"]:  # the measured default needs an adapter left out: the next best
            d["route"] = "task_only" if "task_only" in d["scores"] or not d["scores"] else max(d["scores"], key=d["scores"].get)
    return out


def ship(model: MadxModel, source: Path, dest: Path, languages: Sequence[str], tasks: Mapping[str, str],
         routing: bool = True) -> dict[str, str]:
    """Build ``dest`` from ``source``: language adapters by their own names, task adapters as
    ``{served name: trained name}``. Returns {file relative to dest: sha256} of the new store."""
    entries = read_manifest(source)["adapters"]
    missing = [n for n in [*languages, *tasks.values()] if n not in entries]
    if missing:
        raise SystemExit(f"cannot ship {missing}: not in {source}; has: {sorted(entries)}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for served, name in [*((lang, lang) for lang in languages), *tasks.items()]:
            load_store(model, source, [name])
            if served != name:  # re-register under the served name
                cfg, mod = model.configs[name], model.adapters[name]
                model.remove_adapter(name)
                model.add_adapter(AdapterConfig(served, cfg.kind, cfg.bottleneck, cfg.invertible, cfg.head)
                                  ).load_state_dict(mod.state_dict())
            meta, _ = read_artifact(source / entries[name]["path"])
            extra = {k: entries[name][k] for k in ("metrics", "data") if k in entries[name]}
            extra["trained_as"] = entries[name].get("trained_as", name)
            save_to_store(model, served, tmp, training=meta.get("training"), extra=extra, dtype=torch.float16)
            model.remove_adapter(served)
        if (source / MLM_HEAD_DIR).exists():  # the frozen head the language adapters were trained through
            shutil.copytree(source / MLM_HEAD_DIR, tmp / MLM_HEAD_DIR)
        rt = read_manifest(source).get("routing")
        shipped = served_routing(rt, set(languages), dict(tasks)) if routing and rt else None
        if shipped is not None:
            update_manifest(tmp, lambda m: m.__setitem__("routing", shipped))
        # the detector profiles of the shipped languages and of those the evidence routes (the server
        # recognises both, serving/engine.py)
        profiles = load_profiles(source)
        for lang in sorted({*languages, *((shipped or {}).get("evidence") or {})}):
            if lang in profiles:
                save_profile(tmp, lang, profiles[lang])
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return checksums(dest)


def checksums(store: Path) -> dict[str, str]:
    """{file relative to the store: sha256}, lock files left out."""
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(store).rglob("*")) if p.is_file() and not p.name.startswith(".")}
