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
from .layers import LanguageAdapter, TaskAdapter, layer_bank, masked_attention

SUPPORTED_MODEL_TYPES = ("bert", "xlm-roberta", "roberta")


class UnknownAdapterError(KeyError):
    """A stack names an adapter that is not loaded (message lists what is)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass(frozen=True)
class Group:
    """Rows of a batch that share one adapter (used for heads, in original row order)."""

    name: str
    rows: torch.Tensor | None  # (n,) long row indices, None = every row of the batch


@dataclass(frozen=True)
class Run:
    """A contiguous range [start, end) of the stack-sorted batch using one adapter (None = none)."""

    name: str | None
    start: int
    end: int


@dataclass(frozen=True)
class Gather:
    """One stack position of a batch for the gathered kernel: every row's bottleneck weights are
    gathered from a bank of the distinct adapters at that position, and each layer runs one batched
    matmul pair for all rows, however many adapters the batch holds (``MadxModel.adapter_kernel``)."""

    names: tuple[str | None, ...]  # bank entries; None = rows without an adapter here (zeros)
    index: torch.Tensor  # (B,) long: stack-sorted row -> bank entry
    width: int  # the widest bottleneck among them (narrower ones are zero-padded, exactly)


@dataclass(frozen=True)
class StackPlan:
    """How a batch of per-row stacks maps to grouped adapter calls.

    The encoder works on the batch sorted by stack (``order``; None when already sorted) so that
    rows sharing an adapter are contiguous: ``slots[k]`` covers the sorted batch with Runs of the
    adapter found at stack position k of each row (language adapters at 0, task adapters at 1, or
    the task adapter at 0 for a row without language). Heads use ``heads`` in original row order.
    """

    stacks: tuple[AdapterStack, ...]
    order: torch.Tensor | None  # (B,) sorted position -> original row
    inverse: torch.Tensor | None  # (B,) original row -> sorted position
    slots: tuple[tuple[Run, ...], ...]
    invertible: tuple[Run, ...]
    heads: tuple[Group, ...]
    gathers: tuple[Gather | None, ...] = ()  # per slot, when the gathered kernel runs it (else runs)


def _group(names: Sequence[str | None], device: torch.device) -> tuple[Group, ...]:
    rows: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        if n is not None:
            rows.setdefault(n, []).append(i)
    if len(rows) == 1 and len(next(iter(rows.values()))) == len(names):
        return (Group(next(iter(rows)), None),)
    return tuple(Group(n, torch.tensor(r, dtype=torch.long, device=device)) for n, r in rows.items())


def _runs(names: Sequence[str | None]) -> tuple[Run, ...]:
    runs: list[Run] = []
    for i, n in enumerate(names):
        if runs and runs[-1].name == n:
            runs[-1] = Run(n, runs[-1].start, i + 1)
        else:
            runs.append(Run(n, i, i + 1))
    return tuple(runs)


def _call(mod: nn.Module, dtype: torch.dtype, z: torch.Tensor, **kw) -> torch.Tensor:
    """``mod(z)`` in the module's ``dtype``, returned in z's dtype (a no-op cast when they agree)."""
    if z.dtype == dtype:
        return mod(z, **kw)
    return mod(z.to(dtype), **kw).to(z.dtype)


def _apply_runs(h: torch.Tensor, runs: tuple[Run, ...], fn) -> torch.Tensor:
    """Apply ``fn(run, rows)`` to each contiguous run with an adapter; rows without pass through."""
    if len(runs) == 1:
        return h if runs[0].name is None else fn(runs[0], h)
    return torch.cat([h[r.start:r.end] if r.name is None else fn(r, h[r.start:r.end]) for r in runs])


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
        # madx/precision.py may run the backbone in bf16/fp16/int8; adapters keep adapter_dtype
        # (None: the backbone's) and every adapter call casts its input and output (_call).
        self.backbone_dtype = "fp32"
        self.adapter_dtype: torch.dtype | None = None
        # "runs": one small matmul pair per run of rows sharing an adapter (fewest FLOPs; CPU).
        # "gathered": per layer and stack position one batched matmul pair over all rows, with each
        # row's weights gathered from a bank (a fixed number of kernels however many stacks: GPU).
        # "auto": gathered on CUDA when a position holds more than gather_min_adapters adapters.
        self.adapter_kernel = "runs"
        self.gather_min_adapters = 4
        self._banks: dict[tuple[str, int], tuple[tuple[int, ...], tuple[torch.Tensor, ...]]] = {}

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
        mod.to(device=ref.device, dtype=self.adapter_dtype or ref.dtype)
        mod.train(self.training)
        self.adapters[cfg.name] = mod
        self.configs[cfg.name] = cfg
        return mod

    def remove_adapter(self, name: str) -> None:
        self._require(name)
        del self.adapters[name]
        del self.configs[name]
        for k in [k for k in self._banks if k[0] == name]:
            del self._banks[k]

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
        perm = sorted(range(len(stacks)), key=lambda i: tuple(a or "" for a in (stacks[i].language, stacks[i].task)))
        srt = [stacks[i] for i in perm]
        order = inverse = None
        if perm != list(range(len(stacks))):
            order = torch.tensor(perm, dtype=torch.long, device=device)
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(len(perm), device=device)
        depth = max((len(s.adapters) for s in stacks), default=0)
        slots = tuple(_runs([s.adapters[k] if k < len(s.adapters) else None for s in srt]) for k in range(depth))
        inv = _runs([
            s.adapters[0] if s.adapters and self.adapters[s.adapters[0]].invertible is not None else None
            for s in srt
        ])
        gathers = tuple(self._gather([s.adapters[k] if k < len(s.adapters) else None for s in srt], device)
                        for k in range(depth)) if self._use_gathered(slots) else ()
        return StackPlan(stacks, order, inverse, slots, inv, _group([s.task for s in stacks], device), gathers)

    def _use_gathered(self, slots: tuple[tuple[Run, ...], ...]) -> bool:
        if self.training or self.adapter_kernel == "runs":
            return False
        if self.adapter_kernel == "gathered":
            return True
        on_gpu = next(self.backbone.parameters()).device.type == "cuda"
        return on_gpu and any(len({r.name for r in runs}) > self.gather_min_adapters for runs in slots)

    def _gather(self, names: list[str | None], device: torch.device) -> Gather | None:
        """None (this position keeps runs) when its adapters differ in activation or dtype."""
        bank = list(dict.fromkeys(names))
        mods = [self.adapters[n] for n in bank if n is not None]
        if not mods or any(not m.layers for m in mods):
            return None
        first = [next(iter(m.layers.values())) for m in mods]
        if len({type(b.act) for b in first}) > 1 or len({b.down.weight.dtype for b in first}) > 1:
            return None
        pos = {n: i for i, n in enumerate(bank)}
        return Gather(tuple(bank), torch.tensor([pos[n] for n in names], dtype=torch.long, device=device),
                      max(b.down.out_features for b in first))

    def _bank(self, name: str, width: int) -> tuple[torch.Tensor, ...]:
        """An adapter's stacked layers (layers.layer_bank), rebuilt when its weights change in place."""
        mod = self.adapters[name]
        version = tuple(p._version for p in mod.layers.parameters())
        hit = self._banks.get((name, width))
        if hit is None or hit[0] != version:
            hit = (version, layer_bank(mod.layers, self.num_layers, width))
            self._banks[(name, width)] = hit
        return hit[1]

    def _slot_bank(self, g: Gather) -> tuple[tuple[torch.Tensor, ...], nn.Module]:
        """(down, down bias, up, up bias) of shape (A, L, ...) for the bank entries, and the activation."""
        banks = [self._bank(n, g.width) if n is not None else None for n in g.names]
        real = next(b for b in banks if b is not None)
        parts = tuple(torch.stack([b[i] if b is not None else torch.zeros_like(real[i]) for b in banks])
                      for i in range(4))
        act = next(iter(self.adapters[next(n for n in g.names if n is not None)].layers.values())).act
        return parts, act

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
        if plan.order is not None:  # work on the stack-sorted batch, restore the order at the end
            h, keep = h.index_select(0, plan.order), keep.index_select(0, plan.order)
        h = self._apply_invertible(h, plan, reverse=False)
        keep = None if bool(keep.all()) else keep  # no padding: unmasked attention kernel
        banks = [self._slot_bank(g) if g is not None else None for g in plan.gathers]
        for li, layer in enumerate(self.backbone.encoder.layer):
            h = self._layer(layer, li, h, keep, plan, banks)
        return h if plan.inverse is None else h.index_select(0, plan.inverse)

    def _apply_invertible(self, h: torch.Tensor, plan: StackPlan, reverse: bool) -> torch.Tensor:
        """h is in stack-sorted order."""
        def inv(run: Run, hs: torch.Tensor) -> torch.Tensor:
            mod = self.adapters[run.name].invertible
            return _call(mod, mod.F[0].weight.dtype, hs, reverse=reverse)

        return _apply_runs(h, plan.invertible, inv)

    def invertible(self, hidden: torch.Tensor, stacks: Sequence[AdapterStack] | StackPlan,
                   reverse: bool = False) -> torch.Tensor:
        """Each row's invertible adapter (rows in original order); ``reverse`` is its exact inverse,
        applied before a tied MLM output layer."""
        plan = stacks if isinstance(stacks, StackPlan) else self.plan(stacks)
        if plan.order is not None:
            hidden = hidden.index_select(0, plan.order)
        out = self._apply_invertible(hidden, plan, reverse=reverse)
        return out if plan.inverse is None else out.index_select(0, plan.inverse)

    def _layer(self, layer: nn.Module, li: int, h: torch.Tensor, keep: torch.Tensor | None,
               plan: StackPlan, banks: list | None = None) -> torch.Tensor:
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
        key = str(li)

        def step(run: Run, rs: torch.Tensor) -> torch.Tensor:
            layers = self.adapters[run.name].layers
            if key not in layers:  # leave_out
                return rs
            mod = layers[key]
            return rs + _call(mod, mod.down.weight.dtype, ln(rs + x[run.start:run.end]))

        for k, runs in enumerate(plan.slots):
            bank = banks[k] if banks and k < len(banks) else None
            if bank is None:
                r = _apply_runs(r, runs, step)
                continue
            (wd, bd, wu, bu), act = bank  # (A, L, H, D), (A, L, 1, D), (A, L, D, H), (A, L, 1, H)
            idx = plan.gathers[k].index  # (B,)
            z = ln(r + x)  # (B, T, H)
            zt = z.to(wd.dtype)
            mid = act(torch.baddbmm(bd[:, li].index_select(0, idx), zt, wd[:, li].index_select(0, idx)))  # (B, T, D)
            out = torch.baddbmm(bu[:, li].index_select(0, idx), mid, wu[:, li].index_select(0, idx))  # (B, T, H)
            r = r + out.to(r.dtype)
        return ln(r + x)

    # ------------------------------------------------------------------ heads
    def head_logits(self, hidden: torch.Tensor,
                    stacks: Sequence[AdapterStack] | StackPlan) -> list[torch.Tensor | None]:
        """Per-row head outputs (T, num_outputs) from each row's task adapter; None without task."""
        plan = stacks if isinstance(stacks, StackPlan) else self.plan(stacks)
        out: list[torch.Tensor | None] = [None] * hidden.shape[0]
        for g in plan.heads:
            head = self.adapters[g.name].head
            dt = head.proj.weight.dtype
            if g.rows is None:
                logits = head(hidden.to(dt))
                return list(logits.unbind(0))
            logits = head(hidden.index_select(0, g.rows).to(dt))
            for j, row in enumerate(g.rows.tolist()):
                out[row] = logits[j]
        return out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                stacks: Sequence[AdapterStack], token_type_ids: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        plan = self.plan(stacks)
        hidden = self.encode(input_ids, attention_mask, plan, token_type_ids)
        return hidden, self.head_logits(hidden, plan)
