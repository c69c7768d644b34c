"""MadxModel: one frozen Hugging Face encoder shared by many adapter stacks, chosen per row.

The backbone's own modules (embeddings, attention projections, FFN, LayerNorms) are reused
as they are; only the encoder loop is ours, so that every row of a batch can carry its own
(language, task) stack. Nothing about the active stack is stored on the model: each call
receives the per-row stacks explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .config import AdapterConfig, AdapterStack
from .layers import LanguageAdapter, TaskAdapter, masked_attention

SUPPORTED_MODEL_TYPES = ("bert", "xlm-roberta", "roberta")


class UnknownAdapterError(KeyError):
    """A stack names an adapter that is not loaded (message lists what is)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass(frozen=True)
class Group:
    """Rows of a batch that apply the same adapter at one stack position."""

    name: str
    rows: torch.Tensor | None  # (n,) long row indices, None = every row of the batch


@dataclass(frozen=True)
class StackPlan:
    """How a batch of per-row stacks maps to grouped adapter calls.

    ``slots[k]`` holds one Group per distinct adapter found at stack position k (language
    adapters at 0, task adapters at 1, or the task adapter at 0 for a row without language).
    """

    stacks: tuple[AdapterStack, ...]
    slots: tuple[tuple[Group, ...], ...]
    invertible: tuple[Group, ...]
    heads: tuple[Group, ...]


def _group(names: Sequence[str | None], device: torch.device) -> tuple[Group, ...]:
    rows: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        if n is not None:
            rows.setdefault(n, []).append(i)
    if len(rows) == 1 and len(next(iter(rows.values()))) == len(names):
        return (Group(next(iter(rows)), None),)
    return tuple(Group(n, torch.tensor(r, dtype=torch.long, device=device)) for n, r in rows.items())


class MadxModel(nn.Module):
    """A frozen encoder plus a registry of language and task adapters."""

    def __init__(self, backbone: nn.Module, backbone_name: str = "custom") -> None:
        super().__init__()
        base = getattr(backbone, "base_model", backbone)
        cfg = base.config
        if cfg.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"backbone model_type {cfg.model_type!r} is not supported; use one of {SUPPORTED_MODEL_TYPES}"
            )
        if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"position_embedding_type {cfg.position_embedding_type!r} is not supported (only 'absolute')"
            )
        self.backbone = base
        self.backbone_name = backbone_name
        self.hidden_size: int = cfg.hidden_size
        self.num_layers: int = cfg.num_hidden_layers
        self.num_heads: int = cfg.num_attention_heads
        self.max_positions: int = cfg.max_position_embeddings - (
            cfg.pad_token_id + 1 if cfg.model_type in ("xlm-roberta", "roberta") else 0
        )
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()
        self.adapters = nn.ModuleDict()
        self.configs: dict[str, AdapterConfig] = {}

    # ------------------------------------------------------------------ registry
    def add_adapter(self, cfg: AdapterConfig) -> nn.Module:
        if cfg.name in self.configs:
            raise ValueError(f"adapter {cfg.name!r} is already loaded; remove it first")
        if cfg.kind == "language":
            mod: nn.Module = LanguageAdapter(self.hidden_size, self.num_layers, cfg.bottleneck, cfg.invertible)
        else:
            assert cfg.head is not None
            mod = TaskAdapter(self.hidden_size, self.num_layers, cfg.bottleneck, cfg.head,
                              dropout=self.backbone.config.hidden_dropout_prob)
        bad = [i for i in cfg.bottleneck.leave_out if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(f"leave_out {bad} outside the backbone's layers 0..{self.num_layers - 1}")
        ref = next(self.backbone.parameters())
        mod.to(device=ref.device, dtype=ref.dtype)
        mod.train(self.training)
        self.adapters[cfg.name] = mod
        self.configs[cfg.name] = cfg
        return mod

    def remove_adapter(self, name: str) -> None:
        self._require(name)
        del self.adapters[name]
        del self.configs[name]

    def _require(self, name: str, kind: str | None = None) -> AdapterConfig:
        cfg = self.configs.get(name)
        if cfg is None:
            served = ", ".join(sorted(self.configs)) or "none"
            raise UnknownAdapterError(f"adapter {name!r} is not loaded; loaded: {served}")
        if kind is not None and cfg.kind != kind:
            raise ValueError(f"adapter {name!r} is a {cfg.kind} adapter, used here as a {kind} adapter")
        return cfg

    # ------------------------------------------------------------------ planning
    def plan(self, stacks: Sequence[AdapterStack]) -> StackPlan:
        stacks = tuple(stacks)
        for s in stacks:
            if s.language is not None:
                self._require(s.language, "language")
            if s.task is not None:
                self._require(s.task, "task")
        device = next(self.backbone.parameters()).device
        depth = max((len(s.adapters) for s in stacks), default=0)
        slots = tuple(
            _group([s.adapters[k] if k < len(s.adapters) else None for s in stacks], device)
            for k in range(depth)
        )
        inv_names = [
            s.adapters[0] if s.adapters and self.adapters[s.adapters[0]].invertible is not None else None
            for s in stacks
        ]
        return StackPlan(stacks, slots, _group(inv_names, device), _group([s.task for s in stacks], device))

    # ------------------------------------------------------------------ forward
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               stacks: Sequence[AdapterStack] | StackPlan,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids, attention_mask: (B, T); one stack per row -> last hidden states (B, T, H)."""
        plan = stacks if isinstance(stacks, StackPlan) else self.plan(stacks)
        if len(plan.stacks) != input_ids.shape[0]:
            raise ValueError(f"got {len(plan.stacks)} stacks for a batch of {input_ids.shape[0]} rows")
        if input_ids.shape[1] > self.max_positions:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds the backbone's {self.max_positions} positions"
            )
        keep = attention_mask.bool()
        h = self.backbone.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # (B, T, H)
        h = self._apply_invertible(h, plan, reverse=False)
        for li, layer in enumerate(self.backbone.encoder.layer):
            h = self._layer(layer, li, h, keep, plan)
        return h

    def _apply_invertible(self, h: torch.Tensor, plan: StackPlan, reverse: bool) -> torch.Tensor:
        for g in plan.invertible:
            inv = self.adapters[g.name].invertible
            if g.rows is None:
                h = inv(h, reverse=reverse)
            else:
                h = h.index_copy(0, g.rows, inv(h.index_select(0, g.rows), reverse=reverse))
        return h

    def invert(self, hidden: torch.Tensor, stacks: Sequence[AdapterStack] | StackPlan) -> torch.Tensor:
        """Inverse invertible adapters, applied before a tied MLM output layer."""
        plan = stacks if isinstance(stacks, StackPlan) else self.plan(stacks)
        return self._apply_invertible(hidden, plan, reverse=True)

    def _layer(self, layer: nn.Module, li: int, h: torch.Tensor, keep: torch.Tensor,
               plan: StackPlan) -> torch.Tensor:
        B, T, H = h.shape
        sa, so = layer.attention.self, layer.attention.output
        nh, hd = self.num_heads, H // self.num_heads

        def heads(x: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, nh, T, hd)
            return x.view(B, T, nh, hd).transpose(1, 2)

        p = sa.dropout.p if self.training else 0.0
        ctx = masked_attention(heads(sa.query(h)), heads(sa.key(h)), heads(sa.value(h)), keep, p)
        ctx = ctx.transpose(1, 2).reshape(B, T, H)  # (B, T, H)
        x = so.LayerNorm(so.dropout(so.dense(ctx)) + h)  # attention block output = FFN input
        out = layer.output
        r = out.dropout(out.dense(layer.intermediate(x)))  # FFN output before residual, (B, T, H)
        ln = out.LayerNorm
        # Pfeiffer stack, exactly as AdapterHub's Stack: before each adapter the pretrained LN
        # sees (r + x); the adapter's residual is the un-normalised r; LN(r + x) closes the layer.
        for slot in plan.slots:
            for g in slot:
                bn = self.adapters[g.name].layers[str(li)] if str(li) in self.adapters[g.name].layers else None
                if bn is None:
                    continue
                if g.rows is None:
                    r = r + bn(ln(r + x))
                else:
                    rs, xs = r.index_select(0, g.rows), x.index_select(0, g.rows)
                    r = r.index_copy(0, g.rows, rs + bn(ln(rs + xs)))
        return ln(r + x)

    # ------------------------------------------------------------------ heads
    def head_logits(self, hidden: torch.Tensor,
                    stacks: Sequence[AdapterStack] | StackPlan) -> list[torch.Tensor | None]:
        """Per-row head outputs (T, num_outputs) from each row's task adapter; None without task."""
        plan = stacks if isinstance(stacks, StackPlan) else self.plan(stacks)
        out: list[torch.Tensor | None] = [None] * hidden.shape[0]
        for g in plan.heads:
            head = self.adapters[g.name].head
            if g.rows is None:
                logits = head(hidden)
                return list(logits.unbind(0))
            logits = head(hidden.index_select(0, g.rows))
            for j, row in enumerate(g.rows.tolist()):
                out[row] = logits[j]
        return out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                stacks: Sequence[AdapterStack], token_type_ids: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        plan = self.plan(stacks)
        hidden = self.encode(input_ids, attention_mask, plan, token_type_ids)
        return hidden, self.head_logits(hidden, plan)
