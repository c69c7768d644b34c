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


# A precision is offered only where this CPU runs it faster than fp32 (int8 was 20x slower on an
# AVX2-only EPYC). (flags, native bf16, backbone_dtype) -> refused?
AVX2 = {"sse2", "avx", "avx2", "fma"}
AVX512_VNNI = AVX2 | {"avx512f", "avx512_vnni"}


@pytest.mark.parametrize("flags, bf16, name, refused", [
    (AVX2, False, "int8", True),
    (AVX2 | {"avx_vnni"}, False, "int8", False),  # AVX-VNNI (Alder Lake, Zen 5 ...)
    (AVX512_VNNI, False, "int8", False),
    (AVX2 | {"amx_int8"}, True, "int8", False),
    (set(), False, "int8", False),  # not readable, or not x86: not refused on a guess
    (AVX2, False, "bf16", True),
    (AVX512_VNNI | {"avx512_bf16"}, True, "bf16", False),
    (AVX2, False, "fp32", False),
    (AVX2, False, "auto", False),
])
def test_a_precision_slower_than_fp32_on_this_cpu_is_named(monkeypatch, flags, bf16, name, refused):
    import madx.precision as p

    monkeypatch.setattr(p, "cpu_flags", lambda: set(flags))
    monkeypatch.setattr(p, "cpu_has_fast_bf16", lambda: bf16)
    problem = p.slow_precision(name, "cpu")
    assert (problem is not None) is refused
    if refused:
        assert f"backbone_dtype {name!r} would be slower than fp32 on this CPU" in problem and "\n" not in problem
    assert p.slow_precision(name, "cuda") is None


def test_madx_serve_refuses_a_slow_precision_in_one_line_before_loading(monkeypatch, capsys, tmp_path):
    import madx.precision as p
    import serving.engine
    from serving.main import main

    monkeypatch.setattr(p, "cpu_flags", lambda: set(AVX2))
    monkeypatch.setattr(serving.engine, "Engine", lambda *a, **k: pytest.fail("loaded the model first"))
    monkeypatch.setenv("MADX_BACKBONE_DTYPE", "int8")
    monkeypatch.setenv("MADX_DEVICE", "cpu")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    assert main(["--no-ray", "--host", "127.0.0.1", "--port", str(free)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: backbone_dtype 'int8' would be slower than fp32") \
        and "allow_slow_precision" in err[0], err
    monkeypatch.setenv("MADX_ALLOW_SLOW_PRECISION", "true")  # the operator's explicit choice is served
    from serving.main import precision_problem
    from serving.settings import load_settings
    assert precision_problem(load_settings()) is None


@pytest.mark.parametrize("fast, warned", [(False, True), (True, False)])
def test_madx_train_warns_in_one_line_when_its_precision_is_emulated_here(monkeypatch, capsys, fast, warned):
    import argparse

    import madx.precision as p
    from madx.train.train_commands import load_model

    monkeypatch.setattr(p, "cpu_has_fast_bf16", lambda: fast)
    model, _ = load_model(argparse.Namespace(threads=None, backbone="tiny-xlmr-0+xlmr", backbone_dtype="bf16"))
    err = capsys.readouterr().err.strip().splitlines()
    assert model.backbone_dtype == "bf16"  # runs as asked: a recipe's numbers depend on its precision
    assert (err == [] if not warned else len(err) == 1 and err[0].startswith(
        "warning: backbone_dtype 'bf16' would be slower than fp32 on this CPU") and "runs as asked" in err[0]), err
