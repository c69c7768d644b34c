"""Build madx/default_store (the adapters the server ships with) from a trained store.

    python scripts/make_default_store.py /tmp/madx-exp/store --languages en sw yo rw qu my is ar zh \
        --task ner=ner-s0 --task qa=qa-s0

Language adapters (and their detector profiles) may come from another store than the task
adapters: ``--language-source madx/default_store`` keeps the shipped ones (the store is built in a
temporary directory first, so the source may be the destination).

Weights are stored as float16 (half the size; loading casts back to the model's dtype). Each
entry keeps its training metrics, data provenance and training config; detector profiles of the
shipped languages and the MLM head (``_mlm_head``) of the language source are copied.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from madx.artifacts import load_store, read_artifact, read_manifest, save_to_store, update_manifest  # noqa: E402
from madx.backbone import load_backbone  # noqa: E402
from madx.config import AdapterConfig  # noqa: E402
from madx.langid import load_profiles, save_profile  # noqa: E402
from madx.model import MadxModel  # noqa: E402
from madx.train.masked_lm import MLM_HEAD_DIR  # noqa: E402


def add_routing(store: Path, routing: dict, languages: set[str], served_as: dict[str, str]) -> None:
    """Write route evidence into ``store``'s manifest: routes needing a language adapter the store does
    not ship are kept, for the record, under 'not_served' (the server never picks them), and the task
    adapters it was measured with are mapped to their served names."""
    from serving.routing import RouteError, stacks_for

    source = routing.get("source_language", "en")
    evidence = {}
    for lang, tasks in routing["evidence"].items():
        for task, ev in tasks.items():
            ok, gone = {}, {}
            for route, score in ev["scores"].items():
                try:
                    stacks_for(route, lang, task, source, languages)
                    ok[route] = score
                except RouteError:
                    gone[route] = score
            vs = {r: v for r, v in (ev.get("vs_task_only") or {}).items() if r in ok}
            evidence.setdefault(lang, {})[task] = {**ev, "scores": ok, **({"vs_task_only": vs} if "vs_task_only" in ev else {}),
                                                   **({"not_served": gone} if gone else {})}
    by_source = {v: k for k, v in served_as.items()}
    measured = routing.get("task_adapters", {})
    out = {**routing, "evidence": evidence,
           "task_adapters": {t: {k: by_source.get(n, n) for k, n in names.items()} for t, names in measured.items()},
           "measured_with": measured}
    for d in (out.get("default") or {}).values():
        d["scores"] = {r: v for r, v in d["scores"].items() if r != "english" or source in languages}
        if d["route"] not in d["scores"]:  # the measured default needs an adapter left out: the next best
            d["route"] = "task_only" if "task_only" in d["scores"] or not d["scores"] else max(d["scores"], key=d["scores"].get)
    update_manifest(store, lambda m: m.__setitem__("routing", out))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path)
    ap.add_argument("--dest", type=Path, default=ROOT / "madx" / "default_store")
    ap.add_argument("--languages", nargs="+", required=True)
    ap.add_argument("--task", action="append", default=[], help="SERVED_NAME=SOURCE_NAME[@STORE] (default store: source)")
    ap.add_argument("--language-source", type=Path, default=None, help="store to take language adapters from")
    ap.add_argument("--routing", type=Path, default=None,
                    help="route evidence JSON (scripts/route_evidence.py --out) measured with the source adapters: "
                         "stored in the manifest, with the routes that need an adapter this store leaves out moved "
                         "to 'not_served'")
    args = ap.parse_args(argv)
    lang_src = args.language_source or args.source
    tasks = []  # (served, source name, source store): SOURCE may name another store as NAME@STORE
    for t in args.task:
        served, src = t.split("=", 1)
        name, _, store = src.partition("@")
        tasks.append((served, name, Path(store) if store else args.source))
    manifests = {s: read_manifest(s)["adapters"] for s in {args.source, lang_src, *(t[2] for t in tasks)}}
    bb = load_backbone()
    model = MadxModel(bb.model, bb.name)
    final, args.dest = args.dest, Path(tempfile.mkdtemp(prefix=".default_store.", dir=args.dest.parent))
    pairs = [(lang, lang, lang_src) for lang in args.languages] + tasks
    for served, source, store in pairs:
        src = manifests[store]
        load_store(model, store, [source])
        if served != source:  # re-register under the served name
            cfg = model.configs[source]
            mod = model.adapters[source]
            model.remove_adapter(source)
            new = model.add_adapter(AdapterConfig(served, cfg.kind, cfg.bottleneck, cfg.invertible, cfg.head))
            new.load_state_dict(mod.state_dict())
        meta, _ = read_artifact(store / src[source]["path"])
        extra = {k: src[source][k] for k in ("metrics", "data") if k in src[source]}
        extra["trained_as"] = src[source].get("trained_as", source)
        save_to_store(model, served, args.dest, training=meta.get("training"), extra=extra, dtype=torch.float16)
        model.remove_adapter(served)
    head = lang_src / MLM_HEAD_DIR  # the frozen MLM head the language adapters were trained through
    if head.exists():
        shutil.copytree(head, args.dest / MLM_HEAD_DIR)
    profiles = load_profiles(lang_src)
    for lang in args.languages:
        save_profile(args.dest, lang, profiles[lang])
    if args.routing is not None:
        add_routing(args.dest, json.loads(args.routing.read_text()), set(args.languages),
                    {served: source for served, source, _ in tasks})
    if final.exists():
        shutil.rmtree(final)
    os.replace(args.dest, final)
    size = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
    print(json.dumps({"dest": str(final), "adapters": [p[0] for p in pairs], "bytes": size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
