"""`madx-train` commands that train adapters: mlm-head, lang, derive, profile, task.

Every training command shows a progress bar (loss, tokens/s, ETA), checkpoints to
``<store>/.checkpoints/`` and resumes from there when re-run with the same arguments, and obeys
``--steps`` / ``--max-minutes``. A run stopped by ``--max-minutes`` keeps its checkpoint, writes no
artifact until it is finished and exits with code 3.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..config import AdapterConfig, AdapterStack
from .data import normalise_sentence, read_conll, read_squad, read_text

NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")
STOPPED = 3  # exit code of a run stopped by its time budget (its checkpoint is kept)


def command_line(args) -> str:
    """The command that made an artifact, as recorded in it: a recipe compares it with its own step."""
    return "madx-train " + shlex.join(getattr(args, "argv", None) or sys.argv[1:])


def _cfg(args):
    from .loop import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, max_len=args.max_len, seed=args.seed,
                       checkpoint_every=args.checkpoint_every, max_minutes=args.max_minutes)


def load_model(args):
    from ..backbone import load_backbone
    from ..model import MadxModel

    if args.threads:
        torch.set_num_threads(args.threads)
    bb = load_backbone(args.backbone)
    if bb.tokenizer is None:
        raise SystemExit(f"backbone {args.backbone!r} has no tokenizer; training needs a real backbone")
    model = MadxModel(bb.model, bb.name)
    if getattr(args, "backbone_dtype", "fp32") != "fp32":  # training: adapters fp32; eval: --adapter-dtype
        from ..precision import set_backbone_dtype, slow_precision

        # Run as asked (a recipe's numbers depend on the precision it names), but say what it costs.
        problem = slow_precision(args.backbone_dtype, "cpu")
        if problem:
            print(f"warning: {problem.split(';')[0]}; it runs as asked, several times slower (a recipe's "
                  f"numbers depend on the precision it names: run it where that precision is native)",
                  file=sys.stderr)
        set_backbone_dtype(model, args.backbone_dtype, getattr(args, "adapter_dtype", "fp32"))
    return model, bb.tokenizer


def _checkpoint(args, name: str) -> Path:
    p = args.store / ".checkpoints" / f"{name}-seed{args.seed}.pt"
    if args.no_resume and p.exists():
        p.unlink()
    return p


def _finish(args, model, name: str, result, prov: list, extra: dict[str, Any]) -> int:
    from ..artifacts import save_to_store

    if not result.done:
        print(f"stopped by --max-minutes at step {result.step}/{result.steps}; checkpoint kept, re-run the same "
              f"command to resume", file=sys.stderr)
        return STOPPED
    training = {"config": {**_cfg(args).identity(), "max_minutes": args.max_minutes,
                           "backbone_dtype": getattr(args, "backbone_dtype", "fp32")}, "result": result.summary(),
                "data": prov, "command": command_line(args), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
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


def _lang_lines(args) -> tuple[list[str], list[str], int, list]:
    """(train lines, dev lines, lines dropped as evaluation text, provenance) for ``madx-train lang``."""
    from .data import file_provenance

    if args.corpus:
        from . import corpus

        split = corpus.load(args.language, args.data)
        lines = list(split.train)
        prov = file_provenance([(args.data or corpus.default_root()) / f for f in corpus.BY_CODE[args.language].text])
        dropped = split.dropped_eval
    else:
        if not args.text:
            raise SystemExit("lang needs --text files or --corpus (the languages of madx/train/corpus.py)")
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
    from .loop import fit
    from .masked_lm import fixed_mlm_batches, load_mlm_head, mlm_chunks, mlm_eval, mlm_step_fn

    model, tok = load_model(args)
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
        from ..artifacts import load_store

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

        from ..artifacts import config_to_json

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
        from ..langid import build_profile, save_profile

        save_profile(args.store, args.language, build_profile(lines))
    return rc


def cmd_derive(args) -> int:
    """A language adapter without its adapters in some layers (MAD-X 2.0 leaves out the last layer),
    made from a trained one: the same weights, minus the left-out layers. No training."""
    import dataclasses

    from ..artifacts import load_store, read_manifest, save_to_store

    model, _ = load_model(args)
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
                  training={"derived_from": args.source, "leave_out": list(leave), "command": command_line(args)},
                  extra={"metrics": {"language": meta.get("language", args.source), "derived_from": args.source,
                                     "leave_out": list(leave)}}, dtype=dtype)
    print(f"saved {args.name!r}: {args.source!r} without its adapters in layers {list(leave)}")
    return 0


def cmd_profile(args) -> int:
    from ..langid import build_profile, save_profile

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


def warm_start(model, args, cfg_a):
    """The task adapter ``args.name``, starting from the finished adapter ``args.init_from`` of the store
    (e.g. more epochs in a later session, or target-ready training from the adapter trained alone)."""
    from ..artifacts import load_adapter, read_manifest

    entries = read_manifest(args.store)["adapters"]
    if args.init_from not in entries:
        raise SystemExit(f"--init-from {args.init_from!r} is not in {args.store}; has: {sorted(entries)}")
    got = load_adapter(model, args.store / entries[args.init_from]["path"], name=args.name,
                       expected_sha256=entries[args.init_from]["sha256"])
    if got != cfg_a:
        model.remove_adapter(args.name)
        raise SystemExit(f"--init-from {args.init_from!r} is {got}; this run trains {cfg_a} (same architecture needed)")
    return model.adapters[args.name]


def cmd_task(args) -> int:
    if args.train_lang:
        from .multisource_command import cmd_task_multisource

        return cmd_task_multisource(args)
    if not args.train:
        raise SystemExit("task needs --train files (one source) or --train-lang LANG=FILE ... (several)")
    from ..artifacts import load_store
    from .data import file_provenance
    from .evaluate import evaluate_ner, evaluate_qa
    from .loop import Batches, fit
    from .task_steps import ner_step_fn, ner_train_features, qa_step_fn, qa_train_windows

    model, tok = load_model(args)
    if args.lang_adapter:
        load_store(model, args.store, [args.lang_adapter])
    stack = AdapterStack(args.lang_adapter, args.name)
    dev_info: dict[str, Any] = {}
    evaluate = None
    if args.task == "ner":
        from .data import read_ner_files

        merged = read_ner_files(args.train, NER_LABELS, args.drop_types)
        if args.max_examples:
            merged.sentences = merged.sentences[:args.max_examples]
        examples = ner_train_features(tok, merged, NER_LABELS, args.max_len)
        cfg_a = AdapterConfig.task(args.name, "ner", NER_LABELS, reduction_factor=args.reduction_factor)
        if args.dev:
            dev_data = read_conll(args.dev)
            dev_data.sentences = dev_data.sentences[:args.dev_max]
            dev_info = {"dev": str(args.dev), "dev_sentences": len(dev_data.sentences), "metric": "entity F1"}

            def evaluate() -> float:
                return evaluate_ner(model, tok, stack, dev_data, 256, args.drop_types)["f1"]
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
    mod = warm_start(model, args, cfg_a) if args.init_from else model.add_adapter(cfg_a)
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
