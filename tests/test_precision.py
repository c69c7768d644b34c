"""Backbone precision (madx/precision.py): bf16 / int8 backbones stay close to fp32, adapters keep
their own dtype, mixed batches stay exact per row within the precision, and bad choices are refused."""

from __future__ import annotations

import pytest
import torch

from madx.config import AdapterConfig, AdapterStack
from madx.precision import resolve_backbone_dtype, set_backbone_dtype
from tests.helpers import NER_LABELS, add_random, batch, tiny_madx

STACKS = [AdapterStack("en", "ner"), AdapterStack("sw", "ner"), AdapterStack(None, "ner"),
          AdapterStack("yo", "qa"), AdapterStack("sw", "qa"), AdapterStack("en", "ner")]
LENGTHS = [13, 5, 9, 17, 3, 11]


def build(dtype: str = "fp32", adapter_dtype: torch.dtype = torch.float32):
    m = tiny_madx("xlm-roberta", seed=11, hidden_size=64, heads=4)
    set_backbone_dtype(m, dtype, adapter_dtype)
    for i, cfg in enumerate([AdapterConfig.language("en"), AdapterConfig.language("sw"),
                             AdapterConfig.language("yo", invertible=False),
                             AdapterConfig.task("ner", "ner", NER_LABELS), AdapterConfig.task("qa", "qa")]):
        add_random(m, cfg, i + 1)  # same seeds: the same weights, rounded to adapter_dtype
    return m.eval()


def outputs(m):
    ids, mask = batch(m.backbone.config.vocab_size, LENGTHS, seed=4, pad_id=m.backbone.config.pad_token_id)
    with torch.no_grad():
        hidden, logits = m(ids, mask, STACKS)
    return ids, mask, hidden.float(), [lg.float() for lg in logits]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# (backbone dtype, adapter dtype, max relative L2 error of the hidden states against fp32).
# bf16 keeps 8 mantissa bits (2^-8 = 0.4 % per rounding); int8 per-token/per-row ~1 %.
CASES = [("bf16", torch.float32, 0.03), ("bf16", torch.bfloat16, 0.03), ("int8", torch.float32, 0.05)]


@pytest.mark.parametrize("dtype,adapter_dtype,tol", CASES)
def test_reduced_backbone_is_close_to_fp32(dtype, adapter_dtype, tol):
    ref = outputs(build())
    m = build(dtype, adapter_dtype)
    got = outputs(m)
    assert rel(got[2], ref[2]) <= tol
    for a, b in zip(got[3], ref[3], strict=True):
        assert rel(a, b) <= tol * 2
    assert {p.dtype for p in m.adapters.parameters()} == {adapter_dtype}
    assert m.backbone_dtype == dtype


def test_fp32_is_unchanged_exactly():
    a, b = outputs(build()), outputs(build("fp32"))
    assert torch.equal(a[2], b[2])


@pytest.mark.parametrize("dtype,tol", [("bf16", 0.02), ("int8", 0.02)])
def test_mixed_batch_equals_per_row_in_reduced_precision(dtype, tol):
    m = build(dtype)
    ids, mask, hidden, logits = outputs(m)
    with torch.no_grad():
        for i, (stack, n) in enumerate(zip(STACKS, LENGTHS, strict=True)):
            h1, l1 = m(ids[i:i + 1, :n], mask[i:i + 1, :n], [stack])
            assert rel(hidden[i, :n], h1[0].float()) <= tol, (i, stack)
            assert rel(logits[i][:n], l1[0].float()) <= tol, (i, stack)


def test_int8_quantises_the_encoder_linears_only():
    m = build("int8")
    layer = m.backbone.encoder.layer[0]
    assert type(layer.attention.self.query.weight).__name__ == "Int8Tensor"
    assert type(layer.output.dense.weight).__name__ == "Int8Tensor"
    assert m.backbone.embeddings.word_embeddings.weight.dtype == torch.float32


@pytest.mark.parametrize("name,device,want", [
    ("fp32", "cpu", "fp32"), ("bf16", "cpu", "bf16"), ("int8", "cpu", "int8"),
    ("fp16", "cpu", "needs a CUDA device"), ("int4", "cpu", "unknown"),
])
def test_resolve_backbone_dtype(name, device, want):
    if " " in want or want == "unknown":
        with pytest.raises(ValueError, match=want):
            resolve_backbone_dtype(name, device)
    else:
        assert resolve_backbone_dtype(name, device) == want


def test_auto_on_cpu_follows_native_bf16(monkeypatch):
    import madx.precision as p

    monkeypatch.setattr(p, "cpu_has_fast_bf16", lambda: True)
    assert p.resolve_backbone_dtype("auto", "cpu") == "bf16"
    monkeypatch.setattr(p, "cpu_has_fast_bf16", lambda: False)
    assert p.resolve_backbone_dtype("auto", "cpu") == "fp32"


def test_dtype_after_adapters_is_refused():
    m = build()
    with pytest.raises(ValueError, match="before adding adapters"):
        set_backbone_dtype(m, "bf16")


def test_unknown_adapter_dtype_is_refused():
    m = tiny_madx("xlm-roberta", seed=11, hidden_size=64, heads=4)
    with pytest.raises(ValueError, match="adapter_dtype 'int4' is unknown"):
        set_backbone_dtype(m, "bf16", "int4")
