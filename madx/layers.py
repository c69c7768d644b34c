"""Adapter math as pure torch modules (no I/O, no global state).

Shapes: B = rows, T = tokens, H = hidden size, D = bottleneck size.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import BottleneckConfig, HeadConfig, InvertibleConfig


def activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    if name == "tanh":
        return nn.Tanh()
    if name in ("swish", "silu"):
        return nn.SiLU()
    raise ValueError(f"activation {name!r} is not supported")


class Bottleneck(nn.Module):
    """down -> act -> up, without residual: the caller owns the residual and LayerNorm.

    In Pfeiffer placement one adapter step on FFN output ``r`` with sub-block input ``x`` and
    the pretrained output LayerNorm ``ln`` is ``r + up(act(down(ln(r + x))))``.
    """

    def __init__(self, hidden_size: int, cfg: BottleneckConfig) -> None:
        super().__init__()
        d = cfg.bottleneck_size(hidden_size)
        self.down = nn.Linear(hidden_size, d)
        self.act = activation(cfg.non_linearity)
        if isinstance(self.act, nn.ReLU):
            self.act.inplace = True  # acts on the fresh down-projection output; autograd-safe
        self.up = nn.Linear(d, hidden_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: (N, T, H) -> (N, T, H)
        return self.up(self.act(self.down(z)))


class NiceCoupling(nn.Module):
    """NICE additive coupling (Dinh et al. 2015) over the two halves of the hidden size.

    forward:  y1 = x1 + F(x2);  y2 = x2 + G(y1)
    inverse:  x2 = y2 - G(y1);  x1 = y1 - F(x2)
    """

    def __init__(self, hidden_size: int, cfg: InvertibleConfig) -> None:
        super().__init__()
        self.split1 = hidden_size // 2
        self.split2 = hidden_size - self.split1

        def subnet(d_in: int, d_out: int) -> nn.Sequential:
            d = int(d_in // cfg.reduction_factor)
            return nn.Sequential(nn.Linear(d_in, d), activation(cfg.non_linearity), nn.Linear(d, d_out))

        self.F = subnet(self.split2, self.split1)
        self.G = subnet(self.split1, self.split2)

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:  # (N, T, H)
        x1, x2 = x[..., : self.split1], x[..., self.split1 :]
        if not reverse:
            y1 = x1 + self.F(x2)
            y2 = x2 + self.G(y1)
        else:
            y2 = x2 - self.G(x1)
            y1 = x1 - self.F(y2)
        return torch.cat((y1, y2), dim=-1)


class TaskHead(nn.Module):
    """Linear head: per-token label logits (NER) or start/end logits (QA)."""

    def __init__(self, hidden_size: int, cfg: HeadConfig, dropout: float = 0.1) -> None:
        super().__init__()
        self.cfg = cfg
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden_size, cfg.num_outputs)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (N, T, H) -> (N, T, num_outputs)
        return self.proj(self.dropout(h))


def layer_bank(layers: nn.ModuleDict, num_layers: int, width: int) -> tuple[torch.Tensor, ...]:
    """The bottlenecks of every layer stacked, zero-padded to ``width`` units: down (L, H, width),
    down bias (L, 1, width), up (L, width, H), up bias (L, 1, H). A left-out layer is all zeros and so
    adds exactly 0, like an absent adapter; padded units are 0 before and after the activation
    (relu, gelu, tanh and silu all map 0 to 0), so the padded product is exact."""
    ref = next(iter(layers.values())).down.weight
    H = ref.shape[1]
    wd = ref.new_zeros(num_layers, H, width)
    bd = ref.new_zeros(num_layers, 1, width)
    wu = ref.new_zeros(num_layers, width, H)
    bu = ref.new_zeros(num_layers, 1, H)
    with torch.no_grad():
        for key, b in layers.items():
            i, d = int(key), b.down.out_features
            wd[i, :, :d] = b.down.weight.T
            bd[i, 0, :d] = b.down.bias
            wu[i, :d] = b.up.weight.T
            bu[i, 0] = b.up.bias
    return wd, bd, wu, bu


class LanguageAdapter(nn.Module):
    """Per-layer bottlenecks (keys are layer indices as strings) and an optional NICE block."""

    def __init__(self, hidden_size: int, num_layers: int, cfg: BottleneckConfig,
                 inv: InvertibleConfig | None) -> None:
        super().__init__()
        self.layers = nn.ModuleDict(
            {str(i): Bottleneck(hidden_size, cfg) for i in range(num_layers) if i not in cfg.leave_out}
        )
        self.invertible = NiceCoupling(hidden_size, inv) if inv is not None else None


class TaskAdapter(nn.Module):
    def __init__(self, hidden_size: int, num_layers: int, cfg: BottleneckConfig, head: HeadConfig,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.ModuleDict(
            {str(i): Bottleneck(hidden_size, cfg) for i in range(num_layers) if i not in cfg.leave_out}
        )
        self.invertible = None
        self.head = TaskHead(hidden_size, head, dropout)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None,
                     dropout_p: float = 0.0) -> torch.Tensor:
    """q, k, v: (B, heads, T, d); keep: (B, T) bool, True for real tokens, or None when there is
    no padding (lets SDPA take its unmasked kernel) -> (B, heads, T, d)."""
    mask = None if keep is None else keep[:, None, None, :]  # (B, 1, 1, T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
