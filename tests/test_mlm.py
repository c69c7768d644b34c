"""MLM training pieces: masking rules, masked-only loss, and a language adapter that learns."""

from __future__ import annotations

import torch

from madx.config import AdapterConfig, AdapterStack
from madx.train.mlm import IGNORE, MlmHead, mask_tokens, mlm_loss
from tests.helpers import batch, tiny_madx


def test_mask_tokens_rules():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 100, (64, 50), generator=g)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    inputs, labels = mask_tokens(ids, special, mask_id=3, vocab_size=100, generator=g)
    chosen = labels != IGNORE
    assert not chosen[special].any()
    assert torch.equal(labels[chosen], ids[chosen])
    frac = chosen.float().mean().item()
    assert 0.10 < frac < 0.20
    masked = (inputs == 3) & chosen
    assert 0.7 < masked.sum().item() / chosen.sum().item() < 0.9
    assert torch.equal(inputs[~chosen], ids[~chosen])


def test_mlm_training_step_updates_adapter_and_head_only():
    torch.manual_seed(0)
    m = tiny_madx("xlm-roberta", seed=4)
    m.add_adapter(AdapterConfig.language("sw"))
    head = MlmHead(m.backbone.embeddings.word_embeddings)
    m.train()
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    sw_before = m.adapters["sw"].layers["0"].down.weight.detach().clone()
    # a tiny "language": sentences drawn from 12 token ids in a fixed cyclic order
    ids, mask = batch(m.backbone.config.vocab_size, [16] * 8, seed=1, pad_id=1)
    ids[:] = 10 + (torch.arange(16)[None, :] + torch.arange(8)[:, None]) % 12
    special = torch.zeros_like(ids, dtype=torch.bool)
    params = [p for p in m.adapters.parameters()] + [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-2)
    g = torch.Generator().manual_seed(0)
    stacks = [AdapterStack("sw", None)] * 8
    losses = []
    for _ in range(150):
        inputs, labels = mask_tokens(ids, special, mask_id=3, vocab_size=m.backbone.config.vocab_size, generator=g)
        loss = mlm_loss(m, head, inputs, mask, labels, stacks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first  # the objective trains (mostly the head's bias at this size)
    assert (m.adapters["sw"].layers["0"].down.weight - sw_before).abs().max() > 1e-3  # the adapter moved
    assert all(torch.equal(before[k], v) for k, v in m.backbone.state_dict().items())
    assert not head.decoder_weight.requires_grad
