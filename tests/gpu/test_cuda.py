"""The GPU path: fp16/bf16 backbones on CUDA and the gathered adapter kernel. Skipped
without a CUDA device (this project's CI has none); run on a GPU machine with `pytest tests/gpu`."""

from __future__ import annotations

import pytest
import torch

from madx.config import AdapterStack
from madx.precision import set_backbone_dtype
from tests.helpers import batch, tiny_madx
from tests.test_mixed_batch import STACKS, build

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("dtype,tol", [("fp16", 0.01), ("bf16", 0.03)])
def test_reduced_precision_on_cuda_matches_fp32(dtype, tol):
    ref = build("xlm-roberta")
    ids, mask = batch(ref.backbone.config.vocab_size, [13, 5, 9, 17, 3, 11, 8, 16, 13, 6], seed=4,
                      pad_id=ref.backbone.config.pad_token_id)
    with torch.no_grad():
        h_ref, _ = ref(ids, mask, STACKS)
    m = tiny_madx("xlm-roberta", seed=11).cuda()  # the same backbone as build(); reduced, then the adapters
    set_backbone_dtype(m, dtype)
    for cfg in ref.configs.values():
        m.add_adapter(cfg)
    m.adapters.load_state_dict(ref.adapters.state_dict())
    m.eval()
    for kernel in ("runs", "gathered"):
        m.adapter_kernel = kernel
        with torch.no_grad():
            h, _ = m(ids.cuda(), mask.cuda(), STACKS)
        assert rel(h.cpu(), h_ref) <= tol, kernel


def test_auto_kernel_gathers_on_cuda_with_many_adapters():
    m = build("bert").cuda()
    m.adapter_kernel = "auto"
    many = [AdapterStack(n, "ner") for n in ("en", "sw", "yo", "qu", "my")]
    assert m.plan(many).gathers and not m.plan(many[:2]).gathers
