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

from .config import AdapterStack
from .model import MadxModel

IGNORE = -100


class MlmHead(nn.Module):
    """BERT/XLM-R LM head: dense -> GELU -> LayerNorm -> tied decoder + bias.

    For backbones shipped without a head (the embedded e5-small) the transform and bias are trained
    once per backbone, then frozen and shared by all languages.
    """

    def __init__(self, word_embeddings: nn.Embedding, eps: float = 1e-12) -> None:
        super().__init__()
        V, H = word_embeddings.weight.shape
        self.dense = nn.Linear(H, H)
        self.norm = nn.LayerNorm(H, eps=eps)
        self.decoder_weight = word_embeddings.weight  # (V, H), tied and frozen
        self.bias = nn.Parameter(torch.zeros(V))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (N, H) -> (N, V)
        return F.linear(self.norm(F.gelu(self.dense(h))), self.decoder_weight, self.bias)


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
             labels: torch.Tensor, stacks: Sequence[AdapterStack]) -> torch.Tensor:
    """Mean cross-entropy over masked positions only."""
    plan = model.plan(stacks)
    hidden = model.encode(inputs, attention_mask, plan)  # (B, T, H)
    hidden = model.invertible(hidden, plan, reverse=True)
    at = labels != IGNORE  # (B, T)
    logits = head(hidden[at])  # (N, V), N = masked tokens
    return F.cross_entropy(logits, labels[at])
