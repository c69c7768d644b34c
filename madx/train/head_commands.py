"""`madx-train` commands that make the store's frozen MLM head, which language adapters train through.

- ``mlm-head``: copy the head of a checkpoint that ships one (``--from-backbone``), or train one by
  masked-LM over the frozen backbone on ``--text``.
- ``fit-head``: fit a deeper head on cached masked states of every language in ``corpus`` (the head
  of the embedded backbone, which ships without one): faster and better than ``mlm-head --text``.
"""

from __future__ import annotations

import sys
from collections import Counter

import torch

from ..config import AdapterStack
from .data import read_text
from .train_commands import STOPPED, _cfg, _checkpoint, _exclusions, command_line, load_model


def cmd_mlm_head(args) -> int:
    from .loop import fit
    from .masked_lm import mlm_chunks, mlm_step_fn, save_mlm_head
    from .mlm import MlmHead

    model, tok = load_model(args)
    if args.from_backbone:
        from .masked_lm import pretrained_mlm_head, save_mlm_head

        d = save_mlm_head(pretrained_mlm_head(model, args.backbone), model, args.store,
                          {"source": f"pretrained head of {args.backbone}", "command": command_line(args)})
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
        return STOPPED
    from .data import file_provenance

    d = save_mlm_head(head, model, args.store, {"training": res.summary(), "data": file_provenance(args.text),
                                                "lines": len(lines), "command": command_line(args)})
    print(f"saved MLM head to {d} (loss {res.summary()['first_loss']} -> {res.summary()['last_loss']})")
    return 0


def budget_lines(lines: list[str], chars: int) -> list[str]:
    """A seeded sample of ``lines`` of about ``chars`` characters."""
    from . import corpus

    out, n = [], 0
    for line in corpus.sample(lines, len(lines), seed=1):
        if n >= chars:
            break
        out.append(line)
        n += len(line)
    return out


def cmd_fit_head(args) -> int:
    """Every corpus language gives up to --chars characters of training lines, the first --dev-lines of
    which stop training; the head is fitted on the backbone's cached masked states of them."""
    from . import corpus
    from .head_fit import HeadFitConfig, fit_head, masked_states
    from .masked_lm import mlm_chunks, save_mlm_head

    model, tok = load_model(args)
    codes = args.languages or corpus.available(args.data)
    train, dev = {}, {}
    for c in codes:
        pool = budget_lines(corpus.load(c, args.data).train, args.chars + 2_000)
        dev[c], train[c] = pool[:args.dev_lines], pool[args.dev_lines:]
        print(f"{c}: {len(train[c])} train lines, {len(dev[c])} dev", flush=True)
    unigram = Counter(i for c in codes for ch in mlm_chunks(tok, train[c], 128) for i in ch)
    cfg = HeadFitConfig(depth=args.depth, width=args.width, max_epochs=args.max_epochs, seed=args.seed)
    fit = fit_head(model, masked_states(model, tok, train, seed=0), masked_states(model, tok, dev, seed=1), cfg,
                   eps=model.backbone.config.layer_norm_eps)
    d = save_mlm_head(fit.head, model, args.store, {"training": fit.summary(), "chosen_by": "dev loss", "languages": codes,
                                                    "train_tokens": sum(unigram.values()), "command": command_line(args)},
                      dtype=torch.float16)
    print(f"saved the fitted MLM head (depth {args.depth}, width {args.width}) to {d}")
    return 0
