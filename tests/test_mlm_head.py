"""The MLM head of a headless backbone: cached masked states, a seeded fit, full-vocabulary scores,
save/load of deeper heads, the candidate-vocabulary loss, and the corpus split it trains on."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.nn import functional as F

from madx.config import AdapterConfig, AdapterStack
from madx.model import MadxModel
from madx.train.head_fit import HeadFitConfig, MaskedStates, fit_head, masked_states, score_head, unigram_score
from madx.train.mlm import IGNORE, MlmHead, mask_tokens, mlm_loss
from tests.helpers import batch, randomize_, tiny_madx

TOL = 1e-5


@pytest.fixture(scope="module")
def xlmr_tiny():
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from madx.backbone import xlmr_tokenizer

    tok = xlmr_tokenizer()
    torch.manual_seed(0)
    bb = XLMRobertaModel(XLMRobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=64, max_position_embeddings=130, pad_token_id=1),
                         add_pooling_layer=False)
    return MadxModel(bb.eval(), "tiny-xlmr-head"), tok


def synthetic(model: MadxModel, n: int, seed: int) -> MaskedStates:
    """States that carry their label: the label's embedding plus noise (a head can learn to read it)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(10, 400, (n,), generator=g)
    h = model.backbone.embeddings.word_embeddings.weight[y].detach() + 0.1 * torch.randn(n, model.hidden_size, generator=g)
    return MaskedStates(h, y, torch.zeros(n, dtype=torch.long), ("xx",))


def test_fit_is_seeded_keeps_the_best_epoch_and_learns(xlmr_tiny):
    model, _ = xlmr_tiny
    train, dev = synthetic(model, 3000, 0), synthetic(model, 300, 1)
    cfg = HeadFitConfig(depth=2, width=64, lr=5e-3, batch_size=256, max_epochs=4, patience=2, candidates=512, seed=3)
    a, b = fit_head(model, train, dev, cfg, progress=False), fit_head(model, train, dev, cfg, progress=False)
    c = fit_head(model, train, dev, HeadFitConfig(**{**cfg.__dict__, "seed": 4}), progress=False)
    sa, sb, sc = a.head.state_dict(), b.head.state_dict(), c.head.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # the seed fixes init and order: reproducible
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if k != "decoder_weight")
    losses = [e["dev_loss"] for e in a.curve]
    assert a.best_epoch == 1 + losses.index(min(losses))
    assert score_head(a.head, dev.hidden, dev.labels).loss == pytest.approx(min(losses), abs=1e-3)
    assert min(losses) < unigram_score(Counter(train.labels.tolist()), dev.labels, len(a.head.bias)).loss
    assert not any(p.requires_grad for p in a.head.parameters())


def test_score_head_is_full_vocabulary_cross_entropy_and_top1(xlmr_tiny):
    model, _ = xlmr_tiny
    head = MlmHead(model.backbone.embeddings.word_embeddings, depth=2, width=48)
    randomize_(head.hidden, 1, std=0.2)
    s = synthetic(model, 50, 2)
    got = score_head(head, s.hidden, s.labels, chunk=7)
    with torch.no_grad():
        logits = head(s.hidden)
    assert got.loss == pytest.approx(F.cross_entropy(logits, s.labels).item(), abs=1e-4)
    assert got.top1 == pytest.approx(100 * (logits.argmax(-1) == s.labels).float().mean().item(), abs=0.01)


def test_masked_states_are_the_encoder_states_at_masked_positions(xlmr_tiny):
    model, tok = xlmr_tiny
    st = masked_states(model, tok, {"a": ["one two three four five six seven"] * 3, "b": ["uno dos tres cuatro"] * 2},
                       seed=0, progress=False)
    assert st.hidden.shape == (len(st.labels), model.hidden_size) and set(st.language.tolist()) <= {0, 1}
    assert len(st.of("a")[1]) + len(st.of("b")[1]) == len(st.labels)
    again = masked_states(model, tok, {"a": ["one two three four five six seven"] * 3, "b": ["uno dos tres cuatro"] * 2},
                          seed=0, progress=False)
    assert torch.equal(st.labels, again.labels) and torch.allclose(st.hidden, again.hidden, atol=TOL)


@pytest.mark.parametrize("depth, width", [(1, None), (3, 40)])
def test_deeper_heads_save_and_load_exactly(tmp_path, xlmr_tiny, depth, width):
    from madx.train.masked_lm import load_mlm_head, save_mlm_head

    model, _ = xlmr_tiny
    head = MlmHead(model.backbone.embeddings.word_embeddings, depth=depth, width=width)
    randomize_(head.dense, 5, std=0.2)
    randomize_(head.hidden, 6, std=0.2)
    with torch.no_grad():
        head.bias.normal_()
    save_mlm_head(head, model, tmp_path, {"note": "test"})
    back = load_mlm_head(model, tmp_path)
    h = torch.randn(4, model.hidden_size)
    with torch.no_grad():
        assert back.shape == {"depth": depth, "width": width or model.hidden_size}
        assert torch.allclose(back(h), head(h), atol=TOL)
    (tmp_path / "_mlm_head" / "mlm_head.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="sha256"):
        load_mlm_head(model, tmp_path)


def test_candidate_loss_is_the_full_loss_when_the_candidates_are_the_vocabulary():
    torch.manual_seed(0)
    m = tiny_madx("xlm-roberta", seed=2)
    randomize_(m.add_adapter(AdapterConfig.language("sw")), 3, std=0.1)
    m.eval()
    head = MlmHead(m.backbone.embeddings.word_embeddings)
    ids, mask = batch(m.backbone.config.vocab_size, [12, 9, 12], seed=1, pad_id=1)
    inputs, labels = mask_tokens(ids, ~mask.bool(), 3, m.backbone.config.vocab_size, torch.Generator().manual_seed(0))
    assert (labels != IGNORE).any()
    stacks = [AdapterStack("sw")] * 3
    with torch.no_grad():
        full = mlm_loss(m, head, inputs, mask, labels, stacks)
        every = mlm_loss(m, head, inputs, mask, labels, stacks, vocab=torch.arange(m.backbone.config.vocab_size))
        few = mlm_loss(m, head, inputs, mask, labels, stacks, vocab=torch.tensor([5, 6]))
    assert abs(full.item() - every.item()) < TOL
    assert few.item() < full.item()  # fewer competitors: a smaller (training-only) loss


def test_corpus_split_is_fixed_and_disjoint():
    from madx.train.corpus import heldout

    lines = [f"line number {i} of some text" for i in range(2000)]
    cut = [heldout(x) for x in lines]
    assert cut == [heldout(x) for x in lines] and 0.03 < sum(cut) / len(cut) < 0.07
    assert heldout("Same  LINE!") == heldout("same line")  # decided on the normalised line


@pytest.mark.data
def test_corpus_never_trains_on_evaluation_sentences():
    from madx.train import corpus
    from madx.train.data import normalise_sentence, read_conll

    root = corpus.default_root()
    if not (root / "ner").exists():
        pytest.skip("../shared/data is not here")
    s = corpus.load("yo", root)
    test = {normalise_sentence(" ".join(x.tokens)) for x in read_conll(root / "ner/masakhaner1/yor/test.txt").sentences}
    assert s.dropped_eval > 0 and not test & {normalise_sentence(x) for x in s.train + s.heldout}
    assert not set(s.train) & set(s.heldout)
