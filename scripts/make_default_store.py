"""Build madx/default_store (the adapters the server ships with) from a trained store.

    python scripts/make_default_store.py /tmp/madx-exp/store --languages en sw yo rw qu my is ar zh \
        --task ner=ner-s0 --task qa=qa-s0

Weights are stored as float16 (half the size; loading casts back to the model's dtype). Each
entry keeps its training metrics, data provenance and training config; detector profiles of the
shipped languages are copied.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from madx.artifacts import load_store, read_artifact, read_manifest, save_to_store  # noqa: E402
from madx.backbone import load_backbone  # noqa: E402
from madx.config import AdapterConfig  # noqa: E402
from madx.langid import load_profiles, save_profile  # noqa: E402
from madx.model import MadxModel  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path)
    ap.add_argument("--dest", type=Path, default=ROOT / "madx" / "default_store")
    ap.add_argument("--languages", nargs="+", required=True)
    ap.add_argument("--task", action="append", default=[], help="SERVED_NAME=SOURCE_NAME")
    args = ap.parse_args(argv)
    src = read_manifest(args.source)["adapters"]
    bb = load_backbone()
    model = MadxModel(bb.model, bb.name)
    if args.dest.exists():
        shutil.rmtree(args.dest)
    pairs = [(lang, lang) for lang in args.languages] + [tuple(t.split("=", 1)) for t in args.task]
    for served, source in pairs:
        load_store(model, args.source, [source])
        if served != source:  # re-register under the served name
            cfg = model.configs[source]
            mod = model.adapters[source]
            model.remove_adapter(source)
            new = model.add_adapter(AdapterConfig(served, cfg.kind, cfg.bottleneck, cfg.invertible, cfg.head))
            new.load_state_dict(mod.state_dict())
        meta, _ = read_artifact(args.source / src[source]["path"])
        extra = {k: src[source][k] for k in ("metrics", "data") if k in src[source]}
        extra["trained_as"] = source
        save_to_store(model, served, args.dest, training=meta.get("training"), extra=extra, dtype=torch.float16)
        model.remove_adapter(served)
    profiles = load_profiles(args.source)
    for lang in args.languages:
        save_profile(args.dest, lang, profiles[lang])
    size = sum(f.stat().st_size for f in args.dest.rglob("*") if f.is_file())
    print(json.dumps({"dest": str(args.dest), "adapters": [p[0] for p in pairs], "bytes": size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
