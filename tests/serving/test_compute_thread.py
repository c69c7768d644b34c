"""All torch work of a serving process runs on one thread (serving/compute.py), and decoding on the
event loop is numpy that matches the torch formulation it replaced."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from madx.decode import best_spans, word_predictions
from serving import compute


def test_run_sync_runs_on_the_compute_thread_and_nests():
    ident = compute.run_sync(threading.get_ident)
    assert ident != threading.get_ident()
    assert compute.run_sync(lambda: compute.run_sync(threading.get_ident)) == ident  # nested: no deadlock
    assert compute.run_sync(compute.on_compute_thread) and not compute.on_compute_thread()


def test_engine_loads_and_runs_every_forward_on_the_compute_thread(make_engine):
    engine = make_engine()  # fresh engine: its load happens inside this test
    ident = compute.run_sync(threading.get_ident)
    seen: list[int] = []
    orig = engine.model.forward

    def spy(*a, **k):
        seen.append(threading.get_ident())
        return orig(*a, **k)

    engine.model.forward = spy

    async def go():
        await asyncio.gather(engine.ner(["Angela Merkel visited Paris.", "Nairobi ni mji."], "en"),
                             engine.qa("Where?", "She lives in Nairobi with her family.", "sw"))

    asyncio.run(go())
    assert seen and set(seen) == {ident}


def test_engine_construction_goes_through_the_compute_thread(make_engine, monkeypatch):
    threads: list[int] = []
    import serving.engine as eng

    orig = eng.Engine._load_model

    def spy(self, backbone):
        threads.append(threading.get_ident())
        return orig(self, backbone)

    monkeypatch.setattr(eng.Engine, "_load_model", spy)
    make_engine()
    assert threads == [compute.run_sync(threading.get_ident)]


def _torch_word_predictions(word_ids, logits):  # the torch formulation that decode.py replaced
    probs = logits.float().softmax(-1)
    best_p, best = probs.max(-1)
    out, prev = {}, None
    for t, w in enumerate(word_ids):
        if w is not None and w != prev:
            out[w] = (int(best[t]), float(best_p[t]))
        prev = w
    return out


@pytest.mark.parametrize("seed", range(5))
def test_numpy_word_predictions_equal_torch(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(40, 7, generator=g) * 4
    word_ids = [None] + [i // 3 for i in range(38)] + [None]
    got, ref = word_predictions(word_ids, logits), _torch_word_predictions(word_ids, logits)
    assert got.keys() == ref.keys()
    for w in ref:
        assert got[w][0] == ref[w][0] and abs(got[w][1] - ref[w][1]) < 1e-6
    assert word_predictions(word_ids, logits.numpy()) == got  # numpy input, as the server passes it


@pytest.mark.parametrize("seed", range(5))
def test_numpy_best_spans_scores_are_probabilities_over_context_tokens_and_the_null_token(seed):
    rng = np.random.default_rng(seed)
    n = 30
    offs = [None] * 6 + [(4 * i, 4 * i + 3) for i in range(n - 7)] + [None]
    s, e = rng.normal(size=n).astype(np.float32) * 3, rng.normal(size=n).astype(np.float32) * 3
    spans = best_spans([offs], [s], [e], top_k=5, max_answer_tokens=30, candidates=n)
    ctx = np.array([o is not None for o in offs])
    norm = ctx.copy()
    norm[0] = True  # <s>: "the answer is not in this window"
    ps = torch.tensor(s)[norm].softmax(-1).numpy()[1:]
    pe = torch.tensor(e)[norm].softmax(-1).numpy()[1:]
    idx = np.flatnonzero(ctx)
    ref = sorted(((ps[i] * pe[j], offs[idx[i]][0], offs[idx[j]][1]) for i in range(len(idx))
                  for j in range(len(idx)) if j >= i), reverse=True)[:5]
    assert [(x.start, x.end) for x in spans] == [(a, b) for _, a, b in ref]
    np.testing.assert_allclose([x.score for x in spans], [p for p, _, _ in ref], rtol=1e-5)
