"""Backbone precision: speed and quality of fp32 / bf16 / int8 backbones, in one run.

Speed: the same NER windows (WikiANN sentences of several languages, mixed stacks from the store,
batched by the serving planner) through each variant, interleaved round by round so drift hits
every variant alike; tokens/s counts real tokens. Quality: entity F1 / SQuAD F1 of the store's task
adapters, each variant against fp32 on the same data. ``--split dev`` is what the default was chosen
on; ``--split test`` is the report.

    python benchmarks/bench_dtype.py --split dev --json docs/bench_dtype_dev.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from madx.artifacts import load_store, read_manifest  # noqa: E402
from madx.backbone import load_backbone  # noqa: E402
from madx.config import AdapterStack  # noqa: E402
from madx.features import ner_features, pad  # noqa: E402
from madx.model import MadxModel  # noqa: E402
from madx.precision import set_backbone_dtype  # noqa: E402
from madx.train.data import read_conll, read_squad  # noqa: E402
from madx.train.evaluate import evaluate_ner, evaluate_qa  # noqa: E402
from serving.batcher import plan_batches  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
W = DATA / "ner" / "wikiann_xtreme_panx"
VARIANTS = {  # name -> (backbone dtype, adapter dtype)
    "fp32": ("fp32", torch.float32),
    "bf16": ("bf16", torch.float32),
    "bf16, bf16 adapters": ("bf16", torch.bfloat16),
    "int8": ("int8", torch.float32),
}


def build(variant: str, store: Path, names: list[str]) -> tuple[MadxModel, object]:
    bb = load_backbone()
    m = MadxModel(bb.model, bb.name).eval()
    dtype, adt = VARIANTS[variant]
    set_backbone_dtype(m, dtype, adt)
    load_store(m, store, names)
    return m, bb.tokenizer


def speed_workload(tok, langs: list[str], per_lang: int, served: set[str]):
    seqs, stacks = [], []
    for lang in langs:
        data = read_conll(W / f"dev-{lang}.tsv")
        sents = data.sentences[:per_lang]
        texts = [" ".join(s.tokens) for s in sents]
        spans = []
        for s in sents:
            pos, sp = 0, []
            for t in s.tokens:
                sp.append((pos, pos + len(t)))
                pos += len(t) + 1
            spans.append(sp)
        for f in ner_features(tok, texts, spans, None, 256, skip_empty=True):
            seqs.append(f.input_ids)
            stacks.append(AdapterStack(lang if lang in served else None, "ner"))
    return seqs, stacks


def run_pass(model, seqs, stacks, batches, pad_id) -> None:
    with torch.inference_mode():
        for b in batches:
            ids = pad([seqs[i] for i in b], pad_id)
            lens = torch.tensor([len(seqs[i]) for i in b])
            mask = (torch.arange(ids.shape[1])[None, :] < lens[:, None]).long()
            model(ids, mask, [stacks[i] for i in b])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=ROOT / "madx" / "default_store")
    ap.add_argument("--split", choices=("dev", "test"), default="dev")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--per-lang", type=int, default=64, help="speed: sentences per language")
    ap.add_argument("--ner-max", type=int, default=2000, help="quality: NER sentences per file")
    ap.add_argument("--qa-max", type=int, default=600, help="quality: QA questions per file")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--no-speed", action="store_true", help="quality only (e.g. while other work shares the cores)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    manifest = read_manifest(args.store)["adapters"]
    langs = [n for n, e in manifest.items() if e["kind"] == "language"]
    names = langs + ["ner", "qa"]
    models = {}
    for v in args.variants:
        models[v], tok = build(v, args.store, names)
    pad_id = tok.pad_token_id

    # ---- speed, interleaved
    wl = ["en", "sw", "yo", "rw", "qu", "my", "zh", "ar", "is", "jv"]
    seqs, stacks = speed_workload(tok, wl, args.per_lang, set(langs))
    batches = plan_batches([len(s) for s in seqs], 8192, 64)
    tokens = sum(len(s) for s in seqs)
    for m in models.values() if not args.no_speed else ():
        run_pass(m, seqs, stacks, batches, pad_id)  # warm-up
    times: dict[str, list[float]] = {v: [] for v in models}
    for _ in range(0 if args.no_speed else args.repeats):
        for v, m in models.items():
            t0 = time.perf_counter()
            run_pass(m, seqs, stacks, batches, pad_id)
            times[v].append(time.perf_counter() - t0)
    speed = {v: {"tokens_per_s": round(tokens / statistics.median(ts), 1) if ts else float("nan"),
                 "seconds": [round(t, 3) for t in ts]} for v, ts in times.items()}
    base = speed.get("fp32", next(iter(speed.values())))["tokens_per_s"]
    for v in speed:
        speed[v]["x_fp32"] = round(speed[v]["tokens_per_s"] / base, 2)

    # ---- quality, each variant on the same data
    quality: dict[str, dict[str, float]] = {v: {} for v in models}
    if not args.no_quality:
        sets = ([("WikiANN en", "ner", W / f"{args.split}-en.tsv", None),
                 ("WikiANN sw (zero-shot)", "ner", W / f"{args.split}-sw.tsv", None)]
                + ([("XQuAD en", "qa", DATA / "qa" / "xquad" / "xquad.en.json", None)] if args.split == "test" else [])
                + [(f"TyDiQA sw (zero-shot, {args.split} half)", "qa",
                    DATA / "qa" / "tydiqa_goldp_xtreme" / "train" / "tydiqa.goldp.sw.train.json", args.split)])
        from madx.train.corpus import heldout

        for label, task, path, half in sets:
            for v, m in models.items():
                if task == "ner":
                    data = read_conll(path)
                    data.sentences = data.sentences[:args.ner_max]
                    r = evaluate_ner(m, tok, AdapterStack(None, "ner"), data, 256)
                else:
                    ex = read_squad(path)
                    if half:
                        ex = [q for q in ex if heldout(q.context, 50) == (half == "dev")]
                    r = evaluate_qa(m, tok, AdapterStack(None, "qa"), ex[:args.qa_max], 384, 128)
                quality[v][label] = round(r["f1"], 2)
                print(json.dumps({"variant": v, "set": label, "f1": quality[v][label]}), flush=True)

    out = {"machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads,
                       "cpu_capability": torch.backends.cpu.get_cpu_capability()},
           "store": str(args.store), "split": args.split, "workload": {"windows": len(seqs), "tokens": tokens,
                                                                        "batches": len(batches), "languages": wl},
           "speed": speed, "quality": quality}
    cols = list(next(iter(quality.values())).keys()) if quality and any(quality.values()) else []
    print("| backbone | tokens/s | × fp32 | " + " | ".join(f"{c} F1 (Δ)" for c in cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    if not cols:
        print("(no quality columns: --no-quality)")
    for v in models:
        cells = []
        for c in cols:
            d = quality[v][c] - quality.get("fp32", quality[v])[c]
            cells.append(f"{quality[v][c]:.1f} ({d:+.2f})")
        print(f"| {v} | {speed[v]['tokens_per_s']:.0f} | {speed[v]['x_fp32']:.2f} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
