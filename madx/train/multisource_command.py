"""`madx-train task --train-lang LANG=FILE ...`: a task adapter trained on every labelled language,
each batch through its own language's adapter, a target language's adapter or none
(madx/train/mixture.py says how batches and adapters are drawn).

    madx-train task --store S --task ner --name ner-multi --train-lang en=conll.txt sw=wikiann-sw.tsv \
        ha=masakhaner-hau.txt --drop-types DATE --temperature 3.3 --target-languages zu xh \
        --target-share 0.2 --none-share 0.2 --dev-lang zu=dev-zul.txt sw=dev-sw.tsv --epochs 2

With a dev set per language (``--dev-lang``, each scored under its own language's adapter) the dev
score is their mean F1; the best-scoring weights are kept, as in single-source training. QA takes
SQuAD-format files; ``--train-half sw=dev`` keeps one half of a language's contexts (the halves of
``eval --context-half``), and ``--dev-fraction`` holds out that share of each language's contexts as
its dev set (the dev score: their mean F1).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..config import AdapterConfig, AdapterStack
from .data import lang_paths, read_conll, read_ner_files, read_squad


def _halves(items: list[str]) -> dict[str, bool]:
    """``LANG=dev|test`` -> {language: keep the dev half}."""
    out = {}
    for it in items:
        lang, _, half = it.partition("=")
        if not lang or half not in ("dev", "test"):
            raise SystemExit(f"--train-half {it!r} must look like LANG=dev or LANG=test")
        out[lang] = half == "dev"
    return out


def _qa_sources(args, by_lang: dict[str, list[Path]]) -> tuple[dict[str, list], dict[str, list]]:
    """(training, dev) QA examples by language: excluded contexts dropped, a language's ``--train-half``
    kept, then ``--dev-fraction`` of each language's contexts held out (by hash) as its dev set."""
    from .corpus import heldout
    from .train_commands import _dev_split

    halves = _halves(args.train_half)
    unknown = sorted(set(halves) - set(by_lang))
    if unknown:
        raise SystemExit(f"--train-half names {unknown}, which --train-lang does not")
    skip = {q.context for p in args.exclude_squad for q in read_squad(p)}
    train, dev = {}, {}
    for lg, ps in by_lang.items():
        qa = [q for p in ps for q in read_squad(p) if q.context not in skip
              and (lg not in halves or heldout(q.context, 50) == halves[lg])]  # heldout(c, 50): the dev half
        train[lg], dev[lg] = _dev_split(qa, args.dev_fraction) if args.dev_fraction else (qa, [])
        dev[lg] = dev[lg][:args.dev_max]
        if not train[lg]:
            raise SystemExit(f"--train-lang {lg}: no training question left (after --exclude-squad, --train-half "
                             "and --dev-fraction)")
    return train, {lg: d for lg, d in dev.items() if d}


def cmd_task_multisource(args) -> int:
    from ..artifacts import load_store, read_manifest
    from .data import file_provenance
    from .evaluate import evaluate_ner, evaluate_qa
    from .loop import fit
    from .mixture import Mixture, MixtureConfig, language_probabilities
    from .task_steps import mixture_step_fn, ner_loss, ner_train_features, qa_loss, qa_train_windows
    from .train_commands import NER_LABELS, _cfg, _checkpoint, _finish, load_model, warm_start

    if args.train or args.lang_adapter:
        raise SystemExit("--train-lang trains on several languages: leave out --train and --lang-adapter")
    sources, dev = lang_paths(args.train_lang, "--train-lang"), lang_paths(args.dev_lang, "--dev-lang")
    mix = MixtureConfig(args.temperature, args.target_share, args.none_share)
    langs = list(dict.fromkeys(lang for lang, _ in sources))
    dev_own = args.dev_adapters == "own"
    if args.task == "ner" and (args.train_half or args.dev_fraction):
        raise SystemExit("--train-half and --dev-fraction split QA contexts; NER takes --dev-lang")
    qa_dev = args.task == "qa" and args.dev_fraction > 0
    needed = sorted(({*langs} if mix.shares[0] > 0 or (qa_dev and dev_own) else set())
                    | (set(args.target_languages) if mix.target_share else set())
                    | ({lg for lg, _ in dev} if dev_own else set()))
    entries = read_manifest(args.store)["adapters"] if (args.store / "manifest.json").exists() else {}
    missing = [n for n in needed if n not in entries or entries[n]["kind"] != "language"]
    if missing:
        raise SystemExit(f"no language adapter {missing} in {args.store}; train them first (madx-train lang)")
    model, tok = load_model(args)
    if needed:
        load_store(model, args.store, needed)
    by_lang = {lang: [p for lg, p in sources if lg == lang] for lang in langs}
    if args.task == "ner":
        examples = {lg: ner_train_features(tok, read_ner_files(ps, NER_LABELS, args.drop_types), NER_LABELS, args.max_len)
                    for lg, ps in by_lang.items()}
        cfg_a, loss = AdapterConfig.task(args.name, "ner", NER_LABELS, reduction_factor=args.reduction_factor), ner_loss
    else:
        qa, dev_qa = _qa_sources(args, by_lang)
        examples = {lg: qa_train_windows(tok, x, args.max_len, args.stride) for lg, x in qa.items()}
        cfg_a, loss = AdapterConfig.task(args.name, "qa", reduction_factor=args.reduction_factor), qa_loss
    sizes = {lg: len(x) for lg, x in examples.items()}
    per_epoch = max(1, sum(sizes.values()) // args.batch_size)
    if args.epochs:
        args.steps = max(1, round(args.epochs * per_epoch))
    cfg = _cfg(args)
    mixture = Mixture({lg: [len(e.input_ids) for e in x] for lg, x in examples.items()}, {lg: lg for lg in langs},
                      args.target_languages, mix, args.batch_size, args.seed, args.steps)
    probs = language_probabilities(sizes, args.temperature)
    shares = " / ".join(f"{x:.2f}" for x in mix.shares)
    print(f"{args.name}: {sum(sizes.values())} windows in {len(langs)} languages, {args.steps} steps; adapter shares "
          f"own/target/none {shares}; p(language): " + ", ".join(f"{lg} {p:.3f}" for lg, p in probs.items()))
    dev_info: dict[str, Any] = {}
    evaluate = None
    if args.task == "qa" and dev_qa:
        dev_info = {"dev": f"{args.dev_fraction:.0%} of each language's training contexts (by hash)",
                    "dev_questions": {lg: len(d) for lg, d in dev_qa.items()},
                    "train_half": args.train_half,
                    "metric": "mean SQuAD F1 over languages, each under "
                              + ("its own language adapter" if dev_own else "no language adapter")}

        def evaluate() -> float:
            model.eval()
            try:
                return sum(evaluate_qa(model, tok, AdapterStack(lg if dev_own else None, args.name), d, 384, args.stride,
                                       blind=False)["f1"] for lg, d in dev_qa.items()) / len(dev_qa)
            finally:
                model.train()
    elif dev:
        if args.task != "ner":
            raise SystemExit("--dev-lang scores NER dev files; QA multi-source training has no dev set yet")
        dev_sets = []
        for lg, p in dev:
            d = read_conll(p)
            d.sentences = d.sentences[:args.dev_max]
            dev_sets.append((lg, d))
        dev_info = {"dev": {lg: str(p) for lg, p in dev}, "dev_sentences": {lg: len(d.sentences) for lg, d in dev_sets},
                    "metric": f"mean entity F1, each under {'its own language adapter' if dev_own else 'no language adapter'} "
                              "(DATE and MISC as O)"}

        def evaluate() -> float:
            model.eval()
            try:
                return sum(evaluate_ner(model, tok, AdapterStack(lg if dev_own else None, args.name), d, 256,
                                        drop_types=("DATE", "MISC"))["f1"] for lg, d in dev_sets) / len(dev_sets)
            finally:
                model.train()
    mod = warm_start(model, args, cfg_a) if args.init_from else model.add_adapter(cfg_a)
    model.train()
    prov = file_provenance([p for _, p in sources])
    ident = {"command": "task", "name": args.name, "adapter": repr(cfg_a), "data": prov, "dev": dev_info,
             "mixture": {"temperature": mix.temperature, "target_share": mix.target_share, "none_share": mix.none_share,
                         "targets": list(args.target_languages), "sources": sizes},
             **({"train_half": args.train_half} if args.train_half else {}),
             **({"init_from": args.init_from} if args.init_from else {})}
    res = fit(dict(mod.named_parameters()), mixture_step_fn(model, tok, examples, mixture, args.name, loss), cfg,
              _checkpoint(args, args.name), ident, f"task {args.name}", not args.no_progress, evaluate=evaluate,
              eval_every=args.eval_every, patience=args.patience)
    s = res.summary()
    print(f"{args.name}: trained {res.step} steps", file=sys.stderr)
    return _finish(args, model, args.name, res, prov, {
        "train_loss": s["last_loss"], "dev": dev_info, "dev_score": s["best_dev"], "best_step": s["best_step"],
        "dev_curve": s["dev_curve"], "epochs": round(res.step / per_epoch, 2), "trained_on_language_adapter": None,
        "multisource": {"windows": sizes, "p_language": {k: round(v, 4) for k, v in probs.items()},
                        "shares": dict(zip(("own", "target", "none"), mix.shares, strict=True)),
                        "temperature": mix.temperature, "targets": list(args.target_languages)},
        "init_from": args.init_from, "windows": sum(sizes.values())})
