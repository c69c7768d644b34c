"""Score the server's routing policy on test sets: each target is served by the route the store's
evidence chooses for its language (serving/routing.py, as the server does), next to the task adapter
trained alone (row (a) of the protocol, with the same seed). The evidence was measured on dev data
(`madx-train evidence`); this is the held-out check of the policy that evidence drives.

    python scripts/routed_test.py --store madx/default_store --out results.json \
        --test yo=.../test-yo.tsv ig-masakhaner=.../ibo/test.txt ...

Targets are named as in madx-train eval (``<code>[-<set>]``); rows are appended to ``--out`` in
its format (row "(r) routed by evidence", seed --seed-label), so ``madx-train report`` puts them beside the
protocol's rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from madx.artifacts import load_store, read_manifest  # noqa: E402
from madx.language_codes import canonical  # noqa: E402
from madx.train.data import read_conll  # noqa: E402
from serving.routing import choose, keyed_by_code  # noqa: E402
from serving.settings import Settings  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--test", nargs="+", required=True, help="TARGET=CONLL_FILE")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--backbone-dtype", default="bf16")
    ap.add_argument("--drop-types", nargs="*", default=["DATE"])
    ap.add_argument("--max-examples", type=int, default=None, help="the first N sentences of each test file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--row", default="(r) routed by evidence", help="row label in the results table")
    ap.add_argument("--seed-label", type=int, default=0,
                    help="the seed of the shipped task adapters (rows are compared per seed)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from madx.backbone import load_backbone
    from madx.model import MadxModel
    from madx.precision import set_backbone_dtype
    from madx.train.evaluate import evaluate_ner

    s = Settings()  # the server's defaults: task adapter names, source language
    name, alone = s.tasks["ner"], s.tasks_alone.get("ner")
    m = read_manifest(args.store)
    alone = alone if alone in m["adapters"] else name
    served = {n for n, e in m["adapters"].items() if e["kind"] == "language"}
    ner_adapters = {n for n, e in m["adapters"].items() if e["kind"] == "task" and e.get("task_type") == "ner"}

    def code_of(tag: str) -> str:  # as the server routes a request's language (Engine._language_code)
        return tag if tag in served else canonical(tag)

    routing = keyed_by_code(m.get("routing") or {}, code_of)
    bb = load_backbone(s.backbone)
    model, tok = MadxModel(bb.model, bb.name).eval(), bb.tokenizer
    set_backbone_dtype(model, args.backbone_dtype, "fp32")
    load_store(model, args.store)
    rows = []
    for pair in args.test:
        target, path = pair.split("=", 1)
        lang = code_of(target.split("-")[0])
        choice = choose("ner", lang, served, routing, s.routing.source_language, adapter=name, alone=alone,
                        task_adapters=ner_adapters)
        if choice is None:
            raise SystemExit(f"{args.store} has no routing evidence; run madx-train evidence first")
        stacks = choice.stacks
        data = read_conll(Path(path))
        data.sentences = data.sentences[:args.max_examples]
        for row, st in ((args.row, stacks),):
            t0 = time.monotonic()
            r = evaluate_ner(model, tok, st[0] if len(st) == 1 else st, data, drop_types=tuple(args.drop_types))
            out = {"row": row, "seed": args.seed_label, "task": "ner", "language": target, "route": choice.route,
                   "route_reason": choice.reason, "stack": "|".join(map(str, st)), "backbone_dtype": model.backbone_dtype,
                   "test": path, "seconds": round(time.monotonic() - t0, 1),
                   **{k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}}
            print(json.dumps(out), flush=True)
            rows.append(out)
    prev = json.loads(args.out.read_text()) if args.out.exists() else []
    args.out.write_text(json.dumps(prev + rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
