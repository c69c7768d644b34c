"""Shared builders for unit tests: tiny backbones, non-identity adapters, AdapterHub twins."""

from __future__ import annotations

import torch

from madx.backbone import tiny_backbone
from madx.config import AdapterConfig
from madx.model import MadxModel

TOL = 1e-5  # max abs diff, fp32
NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")


def randomize_(module: torch.nn.Module, seed: int, std: float = 0.3) -> None:
    """Non-identity weights: every parameter drawn N(0, std) so each adapter visibly changes outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def tiny_madx(family: str = "bert", seed: int = 0, **kw) -> MadxModel:
    bb = tiny_backbone(family, seed=seed, **kw)
    return MadxModel(bb.model, bb.name).eval()


def add_random(model: MadxModel, cfg: AdapterConfig, seed: int) -> None:
    randomize_(model.add_adapter(cfg), seed)
    model.eval()


def batch(vocab: int, lengths: list[int], seed: int = 0, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random ids (B, T) and mask; ids avoid the special ids 0..3."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(lengths), T), dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(4, vocab, (n,), generator=g)
        mask[i, :n] = 1
    return ids, mask
