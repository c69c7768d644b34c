"""Turn head logits back into words and character spans (shared by the evaluator and the server).

Pure functions over tensors; no model, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def word_predictions(word_ids: Sequence[int | None], logits: torch.Tensor) -> dict[int, tuple[int, float]]:
    """NER: each word's label from its FIRST sub-word. logits: (T, L) for one window.
    Returns {word index: (label id, probability)}."""
    probs = logits.float().softmax(-1)  # (T, L)
    best_p, best = probs.max(-1)
    out: dict[int, tuple[int, float]] = {}
    prev = None
    for t, w in enumerate(word_ids):
        if w is not None and w != prev:
            out[w] = (int(best[t]), float(best_p[t]))
        prev = w
    return out


@dataclass(frozen=True)
class Span:
    start: int  # character offsets into the original context, end exclusive
    end: int
    score: float  # P(start) * P(end) within the window that produced the span


def best_spans(offsets: Sequence[Sequence[tuple[int, int] | None]], start_logits: Sequence[torch.Tensor],
               end_logits: Sequence[torch.Tensor], top_k: int = 1, max_answer_tokens: int = 30,
               candidates: int = 20) -> list[Span]:
    """QA: the ``top_k`` best answer spans over all windows of one (question, context).

    offsets[w][t] is the character span of token t of window w in the context (None for question
    and special tokens, which can never be part of an answer). start/end_logits[w]: (T_w,).
    Spans from overlapping windows that cover the same characters are merged (best score kept).
    """
    best: dict[tuple[int, int], float] = {}
    for offs, sl, el in zip(offsets, start_logits, end_logits, strict=True):
        ctx = torch.tensor([o is not None for o in offs])
        if not bool(ctx.any()):
            continue
        neg = torch.finfo(torch.float32).min
        ls = sl.float().masked_fill(~ctx, neg).log_softmax(-1)  # (T,) over context tokens only
        le = el.float().masked_fill(~ctx, neg).log_softmax(-1)
        k = min(candidates, int(ctx.sum()))
        s_top, e_top = ls.topk(k).indices.tolist(), le.topk(k).indices.tolist()
        for s in s_top:
            for e in e_top:
                if e < s or e - s + 1 > max_answer_tokens or offs[s] is None or offs[e] is None:
                    continue
                span = (offs[s][0], offs[e][1])
                score = float((ls[s] + le[e]).exp())
                if score > best.get(span, -1.0):
                    best[span] = score
    ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    return [Span(a, b, sc) for (a, b), sc in ranked]
