"""Masked-LM pieces for training language adapters with the backbone frozen.

The decoder is tied to the frozen word embeddings; logits are computed only at masked positions
(a 250k vocabulary over every token would dominate CPU time). The invertible adapter's inverse is
applied to the last hidden states before the head, as in MAD-X.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..config import AdapterStack
from ..model import MadxModel

IGNORE = -100


class MlmHead(nn.Module):
    """BERT/XLM-R LM head: [(Linear -> GELU) x (depth - 1)] -> dense -> GELU -> LayerNorm -> tied
    decoder + bias. ``depth=1`` is exactly the BERT/XLM-R head.

    For backbones shipped without a head (the embedded e5-small) the transform and bias are trained
    once per backbone, then frozen and shared by all languages.
    """

    def __init__(self, word_embeddings: nn.Embedding, eps: float = 1e-12, depth: int = 1,
                 width: int | None = None) -> None:
        super().__init__()
        V, H = word_embeddings.weight.shape
        if depth < 1:
            raise ValueError(f"MLM head depth must be >= 1, got {depth}")
        width = width or H
        self.hidden = nn.ModuleList(nn.Linear(H if i == 0 else width, width) for i in range(depth - 1))
        self.dense = nn.Linear(width if depth > 1 else H, H)
        self.norm = nn.LayerNorm(H, eps=eps)
        self.decoder_weight = word_embeddings.weight  # (V, H), tied and frozen
        self.bias = nn.Parameter(torch.zeros(V))

    @property
    def shape(self) -> dict[str, int]:
        return {"depth": len(self.hidden) + 1, "width": self.dense.in_features}

    def transform(self, h: torch.Tensor) -> torch.Tensor:  # (N, H) -> (N, H)
        for lin in self.hidden:
            h = F.gelu(lin(h))
        return self.norm(F.gelu(self.dense(h)))

    def forward(self, h: torch.Tensor, vocab: torch.Tensor | None = None) -> torch.Tensor:
        """(N, H) -> (N, V) logits, or (N, len(vocab)) over the token ids ``vocab`` only. The hidden
        states and the tied decoder follow the backbone's dtype (bf16 with --backbone-dtype bf16); the
        head computes in its own (fp32), so both are cast to it here, once for every caller."""
        x = self.transform(h.to(self.dense.weight.dtype))  # (N, H)
        w = self.decoder_weight if vocab is None else self.decoder_weight[vocab]  # (V or |vocab|, H)
        b = self.bias if vocab is None else self.bias[vocab]
        return F.linear(x, w.to(x.dtype), b)


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, mask_id: int, vocab_size: int,
                generator: torch.Generator, prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose ``prob`` of non-special tokens; of those 80% -> mask, 10% -> random,
    10% unchanged. input_ids, special: (B, T) -> (inputs, labels) with labels IGNORE elsewhere."""
    chosen = (torch.rand(input_ids.shape, generator=generator) < prob) & ~special
    if not chosen.any():  # at least one target per batch
        cand = (~special).nonzero()
        if len(cand):
            i = cand[torch.randint(len(cand), (1,), generator=generator)][0]
            chosen[i[0], i[1]] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    r = torch.rand(input_ids.shape, generator=generator)
    inputs = input_ids.clone()
    inputs[chosen & (r < 0.8)] = mask_id
    rand_pos = chosen & (r >= 0.8) & (r < 0.9)
    inputs[rand_pos] = torch.randint(vocab_size, (int(rand_pos.sum()),), generator=generator)
    return inputs, labels


def mlm_loss(model: MadxModel, head: MlmHead, inputs: torch.Tensor, attention_mask: torch.Tensor,
             labels: torch.Tensor, stacks: Sequence[AdapterStack], vocab: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over masked positions only: over the full vocabulary, or over the candidate
    ids ``vocab`` plus this batch's labels (a cheaper training loss; report the full one)."""
    plan = model.plan(stacks)
    hidden = model.encode(inputs, attention_mask, plan)  # (B, T, H)
    hidden = model.invertible(hidden, plan, reverse=True)
    at = labels != IGNORE  # (B, T)
    y = labels[at]  # (N,)
    h = hidden[at]  # (N, H)
    if vocab is None:
        return F.cross_entropy(head(h), y)  # (N, V) logits
    ids, pos = torch.unique(torch.cat([vocab, y]), return_inverse=True)
    return F.cross_entropy(head(h, ids), pos[len(vocab):])  # (N, |ids|) logits
