"""A batch mixing many stacks equals running each row alone with its own stack (<= 1e-5 fp32)."""

from __future__ import annotations

import pytest
import torch

from madx.config import AdapterConfig, AdapterStack
from tests.helpers import NER_LABELS, TOL, add_random, batch, tiny_madx


def build(family: str):
    m = tiny_madx(family, seed=11)
    add_random(m, AdapterConfig.language("en"), 1)
    add_random(m, AdapterConfig.language("sw"), 2)
    add_random(m, AdapterConfig.language("yo", invertible=False), 3)
    add_random(m, AdapterConfig.language("qu", leave_out=(0,)), 4)
    add_random(m, AdapterConfig.language("my", reduction_factor=4), 5)
    add_random(m, AdapterConfig.task("ner", "ner", NER_LABELS), 6)
    add_random(m, AdapterConfig.task("ner-conll", "ner", NER_LABELS[:5], leave_out=(1,)), 7)
    add_random(m, AdapterConfig.task("qa", "qa"), 8)
    return m.eval()


STACKS = [
    AdapterStack("en", "ner"),
    AdapterStack("sw", "ner"),
    AdapterStack(None, "ner"),  # task adapter only (zero-shot baseline)
    AdapterStack("yo", "qa"),
    AdapterStack("qu", "ner-conll"),
    AdapterStack("my", "qa"),
    AdapterStack("sw", None),  # language adapter alone
    AdapterStack(None, None),  # plain backbone
    AdapterStack("en", "ner"),  # repeated stack: computed with its twin
    AdapterStack("sw", "qa"),
]


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_mixed_batch_equals_per_row(family):
    m = build(family)
    pad = m.backbone.config.pad_token_id
    lengths = [13, 5, 9, 17, 3, 11, 8, 16, 13, 6]
    ids, mask = batch(m.backbone.config.vocab_size, lengths, seed=4, pad_id=pad)
    with torch.no_grad():
        hidden, logits = m(ids, mask, STACKS)
        for i, (stack, n) in enumerate(zip(STACKS, lengths, strict=True)):
            h1, l1 = m(ids[i : i + 1, :n], mask[i : i + 1, :n], [stack])
            assert (hidden[i, :n] - h1[0]).abs().max() <= TOL, (i, stack)
            if stack.task is None:
                assert logits[i] is None
            else:
                assert (logits[i][:n] - l1[0]).abs().max() <= TOL, (i, stack)
                assert logits[i].shape[-1] == m.configs[stack.task].head.num_outputs


def test_each_stack_changes_the_output():
    """Guard against a test that passes because adapters do nothing: every distinct stack differs."""
    m = build("bert")
    ids, mask = batch(m.backbone.config.vocab_size, [10] * len(STACKS), seed=5)
    ids[:] = ids[0]  # same tokens in every row
    with torch.no_grad():
        hidden = m.encode(ids, mask, STACKS)
    distinct = {s: hidden[i] for i, s in enumerate(STACKS)}
    vals = list(distinct.values())
    for a in range(len(vals)):
        for b in range(a + 1, len(vals)):
            assert (vals[a] - vals[b]).abs().max() > 1e-3


def test_invertible_adapter_is_per_row_and_inverts():
    m = build("bert")
    ids, mask = batch(m.backbone.config.vocab_size, [6, 6, 6], seed=6)
    stacks = [AdapterStack("en", "ner"), AdapterStack("sw", "ner"), AdapterStack(None, "ner")]
    plan = m.plan(stacks)
    assert {r.name for r in plan.invertible} == {"en", "sw", None}
    h = torch.randn(3, 6, m.hidden_size)
    with torch.no_grad():
        fwd = m.invertible(h, plan)
        back = m.invertible(fwd, plan, reverse=True)
    assert (back - h).abs().max() <= TOL
    assert (fwd[2] - h[2]).abs().max() == 0  # no language adapter -> identity
    assert (fwd[0] - h[0]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "stack,message",
    [
        (AdapterStack("xx", "ner"), "adapter 'xx' is not loaded; loaded: en, my, ner, ner-conll, qa, qu, sw, yo"),
        (AdapterStack("ner", None), "adapter 'ner' is a task adapter, used here as a language adapter"),
        (AdapterStack("en", "sw"), "adapter 'sw' is a language adapter, used here as a task adapter"),
    ],
)
def test_bad_stacks_are_refused_with_the_rule(stack, message):
    m = build("bert")
    with pytest.raises((KeyError, ValueError)) as e:
        m.plan([stack])
    assert message in str(e.value)


def test_batch_and_stack_count_must_agree():
    m = build("bert")
    ids, mask = batch(m.backbone.config.vocab_size, [4, 4])
    with pytest.raises(ValueError, match="got 1 stacks for a batch of 2 rows"):
        m.encode(ids, mask, [AdapterStack()])


def test_too_long_sequence_is_refused_not_truncated():
    m = build("bert")
    ids, mask = batch(m.backbone.config.vocab_size, [m.max_positions + 1])
    with pytest.raises(ValueError, match="exceeds the backbone's 64 positions"):
        m.encode(ids, mask, [AdapterStack()])


def test_backbone_is_frozen_and_adapters_train():
    m = build("bert")
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert all(p.requires_grad for p in m.adapters.parameters())
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    m.train()
    ids, mask = batch(m.backbone.config.vocab_size, [7, 7])
    _, logits = m(ids, mask, [AdapterStack("sw", "ner")] * 2)
    torch.stack(logits).sum().backward()
    assert m.adapters["sw"].layers["0"].down.weight.grad is not None
    assert m.adapters["ner"].head.proj.weight.grad is not None
    assert all(torch.equal(before[k], v) for k, v in m.backbone.state_dict().items())


# ------------------------------------------------------------------ gathered kernel (GPU path)
@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_gathered_kernel_equals_runs(family):
    """One batched matmul pair per layer and position, weights gathered per row, equals the per-run
    kernel (<= 1e-5 fp32): mixed reduction factors (zero-padded), a left-out layer, rows without a
    language or task adapter, the plain backbone."""
    m = build(family)
    pad = m.backbone.config.pad_token_id
    lengths = [13, 5, 9, 17, 3, 11, 8, 16, 13, 6]
    ids, mask = batch(m.backbone.config.vocab_size, lengths, seed=4, pad_id=pad)
    with torch.no_grad():
        ref_h, ref_l = m(ids, mask, STACKS)
        m.adapter_kernel = "gathered"
        plan = m.plan(STACKS)
        assert all(g is not None for g in plan.gathers) and len(plan.gathers) == 2
        assert plan.gathers[0].width == m.hidden_size // 2  # rf 2, the widest language adapter; rf 4 is padded
        h, lg = m(ids, mask, STACKS)
    assert (h - ref_h).abs().max() <= TOL
    for a, b in zip(lg, ref_l, strict=True):
        assert (a is None and b is None) or (a - b).abs().max() <= TOL


def test_gathered_kernel_keeps_runs_where_activations_differ():
    m = build("bert")
    add_random(m, AdapterConfig.language("gl", non_linearity="gelu"), 9)
    stacks = [AdapterStack("gl", "ner"), AdapterStack("sw", "ner"), AdapterStack("en", "qa")]
    ids, mask = batch(m.backbone.config.vocab_size, [7, 7, 7], seed=3)
    with torch.no_grad():
        ref, _ = m(ids, mask, stacks)
        m.adapter_kernel = "gathered"
        plan = m.plan(stacks)
        h, _ = m(ids, mask, stacks)
    assert plan.gathers[0] is None and plan.gathers[1] is not None  # relu + gelu at 0: runs there
    assert (h - ref).abs().max() <= TOL


@pytest.mark.parametrize("kernel,device,adapters,want", [
    ("runs", "cpu", 9, False), ("gathered", "cpu", 1, True), ("auto", "cpu", 9, False),
])
def test_kernel_choice(kernel, device, adapters, want):
    m = build("bert")
    m.adapter_kernel = kernel
    names = ["en", "sw", "yo", "qu", "my"][:adapters]
    assert bool(m.plan([AdapterStack(n, "ner") for n in names]).gathers) is want


def test_gathered_bank_follows_in_place_weight_changes():
    m = build("bert")
    m.adapter_kernel = "gathered"
    ids, mask = batch(m.backbone.config.vocab_size, [6, 6], seed=2)
    stacks = [AdapterStack("en", "ner"), AdapterStack("sw", "ner")]
    with torch.no_grad():
        before, _ = m(ids, mask, stacks)
        m.adapters["sw"].layers["1"].up.weight.mul_(3.0)  # (a constant bias shift would vanish in the LayerNorm)
        after, _ = m(ids, mask, stacks)
        m.adapter_kernel = "runs"
        ref, _ = m(ids, mask, stacks)
    assert (after - ref).abs().max() <= TOL and (after - before).abs().max() > 1e-3
