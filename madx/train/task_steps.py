"""Training examples and loss steps of the NER and QA task adapters."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from ..config import AdapterStack
from ..features import IGNORE, ner_features, pad, qa_windows
from ..model import MadxModel
from ..words import join_words
from .data import DataError, NerFile, QAExample
from .loop import Batches, TrainConfig


# ---------------------------------------------------------------------- NER
def ner_train_features(tokenizer, data: NerFile, labels: Sequence[str], max_len: int):
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = sorted({t for s in data.sentences for t in s.tags} - set(index))
    if unknown:
        raise DataError(f"tags {unknown} are not in the adapter's labels {list(labels)}; train a type "
                        f"it lacks as O with --drop-types (e.g. --drop-types {unknown[0][2:]})")
    texts, spans = zip(*(join_words(s.tokens) for s in data.sentences), strict=True) if data.sentences else ((), ())
    ys = [[index[t] for t in s.tags] for s in data.sentences]
    return ner_features(tokenizer, texts, spans, ys, max_len)


def ner_loss(model: MadxModel, tokenizer, rows, stack: AdapterStack) -> tuple[torch.Tensor, int]:
    """Token cross-entropy of a batch of NER windows under ``stack``; (loss, real tokens)."""
    ids = pad([f.input_ids for f in rows], tokenizer.pad_token_id)
    y = pad([f.labels for f in rows], IGNORE)
    mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor([len(f.input_ids) for f in rows])[:, None]).long()
    _, logits = model(ids, mask, [stack] * len(rows))
    logits = torch.stack(logits)  # (B, T, L)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE), int(mask.sum())


def ner_step_fn(model: MadxModel, tokenizer, feats, stack: AdapterStack, cfg: TrainConfig):
    batches = Batches([len(f.input_ids) for f in feats], cfg.batch_size, cfg.seed)
    return lambda step: ner_loss(model, tokenizer, [feats[i] for i in batches(step)], stack)


def mixture_step_fn(model: MadxModel, tokenizer, examples: dict[str, list], mixture, task: str, loss):
    """Multi-source steps (madx/train/mixture.py): each step's batch comes from the language the
    mixture draws and passes through the language adapter it picks, under task adapter ``task``."""
    def loss_at(step: int) -> tuple[torch.Tensor, int]:
        d = mixture(step)
        return loss(model, tokenizer, [examples[d.language][i] for i in d.rows], AdapterStack(d.adapter, task))

    return loss_at


# ---------------------------------------------------------------------- QA
def qa_train_windows(tokenizer, examples: Sequence[QAExample], max_len: int, stride: int):
    """Every window of every answered question. A window that does not hold the (first) gold
    answer is kept with both targets on ``<s>`` (index 0), as in BERT's SQuAD recipe: the model
    learns to say "not here", which makes span scores comparable across windows
    (``decode.best_spans`` normalises over context tokens plus ``<s>``)."""
    out = []
    for ex in examples:
        if ex.answers:
            out.extend(qa_windows(tokenizer, ex.question, ex.context, max_len, stride, ex.answers[0]))
    if not any(w.start_position > 0 for w in out):
        raise ValueError("no QA training window contains its answer")
    return out


def qa_answerable(w) -> torch.Tensor:
    """(T,) bool: the positions a QA head may point at in window ``w``: its context tokens and <s>."""
    m = torch.tensor([o is not None for o in w.offsets])
    m[0] = True
    return m


def qa_step_fn(model: MadxModel, tokenizer, windows, stack: AdapterStack, cfg: TrainConfig):
    """Start/end cross-entropy over each window's context tokens and <s> (question tokens and
    separators can never be an answer, so they get no probability mass)."""
    batches = Batches([len(w.input_ids) for w in windows], cfg.batch_size, cfg.seed)
    return lambda step: qa_loss(model, tokenizer, [windows[i] for i in batches(step)], stack)


def qa_loss(model: MadxModel, tokenizer, rows, stack: AdapterStack) -> tuple[torch.Tensor, int]:
    """Start/end cross-entropy of a batch of QA windows under ``stack``; (loss, real tokens)."""
    ids = pad([w.input_ids for w in rows], tokenizer.pad_token_id)
    mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor([len(w.input_ids) for w in rows])[:, None])
    allowed = torch.zeros_like(mask)  # (B, T)
    for i, w in enumerate(rows):
        allowed[i, :len(w.input_ids)] = qa_answerable(w)
    _, logits = model(ids, mask.long(), [stack] * len(rows))
    logits = torch.stack(logits).masked_fill(~allowed[..., None], -1e4)  # (B, T, 2)
    sp = torch.tensor([w.start_position for w in rows])
    ep = torch.tensor([w.end_position for w in rows])
    return (F.cross_entropy(logits[..., 0], sp) + F.cross_entropy(logits[..., 1], ep)) / 2, int(mask.sum())
