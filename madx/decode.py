"""Turn head logits back into words and character spans (shared by the evaluator and the server).

Pure functions; no model, no I/O. The math is numpy on purpose: the server decodes on its event-loop
thread, and a torch op there would start a second OpenMP pool next to the compute thread's, which
slows every forward pass (serving/compute.py). Inputs may be numpy arrays or CPU torch tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def as_array(x: Any) -> np.ndarray:
    """float32 numpy view of a numpy array or a CPU torch tensor."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def softmax(x: np.ndarray) -> np.ndarray:  # over the last axis
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def log_softmax(x: np.ndarray) -> np.ndarray:  # (T,)
    z = x - x.max()
    return z - np.log(np.exp(z).sum())


def word_predictions(word_ids: Sequence[int | None], logits: Any) -> dict[int, tuple[int, float]]:
    """NER: each word's label from the token that carries it (``NerFeature.word_ids``: the word's
    first character-carrying sub-word; the first occurrence wins). logits: (T, L) for one window.
    Returns {word index: (label id, probability)}."""
    probs = softmax(as_array(logits))  # (T, L)
    best = probs.argmax(-1)  # (T,)
    best_p = probs.max(-1)
    out: dict[int, tuple[int, float]] = {}
    for t, w in enumerate(word_ids):
        if w is not None and w not in out:
            out[w] = (int(best[t]), float(best_p[t]))
    return out


@dataclass(frozen=True)
class Span:
    start: int  # character offsets into the original context, end exclusive
    end: int
    score: float  # P(start) * P(end) within the window that produced the span


def best_spans(offsets: Sequence[Sequence[tuple[int, int] | None]], start_logits: Sequence[Any],
               end_logits: Sequence[Any], top_k: int = 1, max_answer_tokens: int = 30,
               candidates: int = 20, null_index: int | None = 0) -> list[Span]:
    """QA: the ``top_k`` best answer spans over all windows of one (question, context).

    offsets[w][t] is the character span of token t of window w in the context (None for question
    and special tokens, which can never be part of an answer). start/end_logits[w]: (T_w,).

    Each window's start and end distributions are normalised over its context tokens AND its
    ``null_index`` token (``<s>``, where training puts the target of a window that does not hold
    the answer): a window that "knows" the answer is elsewhere puts its mass on the null token, so
    scores are comparable across windows. ``null_index=None`` normalises over context tokens only.
    Spans from overlapping windows that cover the same characters are merged (best score kept).
    """
    best: dict[tuple[int, int], float] = {}
    for offs, sl, el in zip(offsets, start_logits, end_logits, strict=True):
        ctx = np.array([o is not None for o in offs])
        if not ctx.any():
            continue
        norm = ctx.copy()
        if null_index is not None:
            norm[null_index] = True
        ls = np.full(len(offs), -np.inf, dtype=np.float32)
        le = ls.copy()
        ls[norm] = log_softmax(as_array(sl)[norm])  # (T,) over context tokens (+ the null token)
        le[norm] = log_softmax(as_array(el)[norm])
        ls[~ctx] = -np.inf  # the null token never starts or ends an answer
        le[~ctx] = -np.inf
        k = min(candidates, int(ctx.sum()))
        s_top = np.argsort(-ls, kind="stable")[:k].tolist()  # best first, ties to the earlier token
        e_top = np.argsort(-le, kind="stable")[:k].tolist()
        for s in s_top:
            for e in e_top:
                if e < s or e - s + 1 > max_answer_tokens or not (ctx[s] and ctx[e]):
                    continue
                span = (offs[s][0], offs[e][1])
                score = float(np.exp(ls[s] + le[e]))
                if score > best.get(span, -1.0):
                    best[span] = score
    ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    return [Span(a, b, sc) for (a, b), sc in ranked]
