"""Which windows go in the next forward pass: fair queueing over requests by tokens, passes bounded by
measured work. Pure scheduling: rows with fake futures, no model."""

from __future__ import annotations

import asyncio

import pytest

from madx.config import AdapterStack
from serving.batcher import Batcher, Row
from serving.metrics import Metrics

STACK = AdapterStack("en", "ner")


def batcher(max_tokens=1000, max_rows=64, max_pass_ms=None) -> Batcher:
    return Batcher(lambda seqs, stacks: [], max_tokens, max_rows, 0, 100_000, Metrics(replica="t"),
                   max_pass_ms=max_pass_ms)


def queue(b: Batcher, requests: list[tuple[int, int]]) -> None:
    """requests: (rows, tokens per row) each, queued in this order."""
    loop = asyncio.new_event_loop()
    for rows, length in requests:
        b._requests += 1
        b.queue.extend(Row([1] * length, STACK, loop.create_future(), b._requests) for _ in range(rows))


def passes(b: Batcher, n: int) -> list[dict[int, int]]:
    """Tokens per request in each of the next n passes."""
    out = []
    for _ in range(n):
        per: dict[int, int] = {}
        for r in b._take():
            per[r.request] = per.get(r.request, 0) + len(r.ids)
        out.append(per)
    return out


def test_a_small_request_behind_a_big_one_goes_in_the_next_pass_whole():
    b = batcher()
    queue(b, [(1000, 100)])  # 100 000 tokens: 100 passes
    passes(b, 3)
    queue(b, [(3, 20)])  # arrives while the big one runs
    nxt = passes(b, 1)[0]
    assert nxt.get(2) == 60 and sum(nxt.values()) <= 1000


@pytest.mark.parametrize("requests, share", [
    ([(500, 100), (500, 100)], {1: 500, 2: 500}),  # two big requests: half each
    ([(500, 100), (500, 50)], {1: 500, 2: 500}),  # by tokens, not rows: the short rows' request gets as many tokens
    ([(500, 100), (500, 100), (500, 100), (500, 100)], {1: 250, 2: 250, 3: 250, 4: 250}),
])
def test_waiting_requests_share_each_pass_by_tokens(requests, share):
    b = batcher()
    queue(b, requests)
    total: dict[int, int] = {}
    for p in passes(b, 8):
        for k, v in p.items():
            total[k] = total.get(k, 0) + v
    assert all(abs(total[k] / 8 - v) <= 0.15 * v for k, v in share.items()), total


def test_long_rows_are_not_starved_by_many_short_requests():
    b = batcher(max_tokens=1000)
    queue(b, [(1, 900)])  # one row that needs nearly a whole pass
    for _ in range(30):
        queue(b, [(20, 10)])  # a stream of small requests
    got = [1 in p for p in passes(b, 12)]
    assert any(got), "the long row never ran"


def test_a_row_longer_than_a_pass_still_runs_alone():
    b = batcher(max_tokens=256)
    queue(b, [(1, 512), (2, 10)])
    first = b._take()
    assert [len(r.ids) for r in first] == [512]
    assert sorted(len(r.ids) for r in b._take()) == [10, 10]


@pytest.mark.parametrize("measured, max_pass_ms, want", [
    (None, 250, 8192),  # nothing measured yet: max_batch_tokens
    ((4000, 1.0), 250, 1000),  # 4 000 tokens/s: 250 ms is 1 000 tokens
    ((100_000, 1.0), 250, 8192),  # fast: max_batch_tokens still bounds it
    ((1000, 10.0), 250, 64),  # very slow: never under 64
    ((4000, 1.0), None, 8192),  # no time bound
])
def test_a_pass_holds_about_max_pass_ms_of_measured_work(measured, max_pass_ms, want):
    b = batcher(max_tokens=8192, max_pass_ms=max_pass_ms)
    if measured:
        b.speed.add(*measured)
    assert b.pass_tokens() == want


def _forward_at(b: Batcher, monkeypatch, tokens: int, seconds: float) -> None:
    """One pass of ``tokens`` padded tokens through ``b._forward`` that took ``seconds`` by its clock."""
    import serving.batcher as batcher_module

    clock = iter([0.0, seconds])
    monkeypatch.setattr(batcher_module.time, "perf_counter", lambda: next(clock))
    b.run = lambda seqs, stacks: [None] * len(seqs)
    b._forward([Row([1] * tokens, STACK, None, 1)])


def test_one_sentence_passes_do_not_drag_the_measured_rate_down(monkeypatch):
    """Was: every pass counted. A one-sentence pass is mostly fixed cost, so after small traffic the rate
    read ~30 tokens/s against 8 000 for full passes: the next big request got a 413 for hours of work
    it would have done in seconds, and passes shrank to 64 tokens."""
    b = batcher(max_tokens=8192, max_pass_ms=250)
    _forward_at(b, monkeypatch, 2048, 0.25)  # a full pass: 8 192 tokens/s
    for _ in range(50):
        _forward_at(b, monkeypatch, 12, 0.4)  # one short sentence each, 30 tokens/s
    assert b.speed.tokens_per_s == pytest.approx(8192)
    assert b.pass_tokens() == 2048


@pytest.mark.parametrize("passes, want", [
    ([], None),  # nothing full yet: unmeasured
    ([(300, 1.0)], None),  # under 512 tokens and under half of the 8 192 budget
    ([(600, 1.0)], 600),
    ([(600, 1.0), (1200, 1.0)], 0.8 * 600 + 0.2 * 1200),  # a moving average
])
def test_the_rate_counts_full_passes_only(passes, want):
    from serving.batcher import Throughput

    t = Throughput()
    for tokens, seconds in passes:
        t.add(tokens, seconds, budget=8192)
    assert t.tokens_per_s == (None if want is None else pytest.approx(want))


def test_on_a_slow_machine_passes_of_half_the_budget_still_count():
    """A machine whose max_pass_ms holds fewer than 512 tokens must keep measuring, or its rate freezes."""
    from serving.batcher import Throughput

    t = Throughput()
    t.add(300, 1.0, budget=400)
    assert t.tokens_per_s == pytest.approx(300)


def test_an_engine_has_a_measured_rate_before_its_first_request(make_engine):
    """Its two calibration passes run before any request, outside the metrics."""
    eng = make_engine()
    assert eng.batcher.speed.tokens_per_s is not None and eng.batcher.speed.tokens_per_s > 0
    assert not eng.m.registry.get_sample_value("madx_tokens_total", {"replica": eng.m.replica})


# ---------------------------------------------------------------- tokenising: fair turns, early 413

def test_a_small_request_tokenises_between_the_chunks_of_a_big_one():
    """Was: one prep thread, first come first served: a one-sentence request waited for all 64 long
    texts of the request before it to be tokenised."""
    import threading
    import time

    from serving.prep import FairPrep

    prep, order, gate = FairPrep(), [], threading.Event()

    def job(name):
        gate.wait()
        time.sleep(0.01)
        order.append(name)
    big = [prep.submit("big", job, f"big{i}") for i in range(10)]
    small = prep.submit("small", job, "small")
    gate.set()
    small.result(10)
    for f in big:
        f.result(10)
    assert order.index("small") <= 2, order


def test_a_cancelled_request_s_jobs_do_not_run():
    import threading

    from serving.prep import FairPrep

    prep, ran, gate = FairPrep(), [], threading.Event()
    first = prep.submit("a", gate.wait)
    later = [prep.submit("a", ran.append, i) for i in range(5)]
    for f in later:
        f.cancel()
    gate.set()
    first.result(10)
    prep.submit("b", lambda: None).result(10)
    assert ran == []


@pytest.mark.parametrize("lengths, size, want", [
    ([10, 10, 10], 25, [(0, 2), (2, 1)]),
    ([100], 25, [(0, 1)]),  # a longer text alone
    ([5, 100, 5], 25, [(0, 1), (1, 1), (2, 1)]),
    ([], 25, []),
])
def test_texts_are_cut_into_chunks_of_about_size_characters(lengths, size, want):
    from serving.prep import chunks

    got = chunks(["x" * n for n in lengths], size)
    assert [(first, len(part)) for first, part in got] == want


def test_an_error_names_the_text_by_its_place_in_the_request(engine):
    from serving.prep import ner_prep

    with pytest.raises(ValueError, match=r"^sentence 7: word"):
        ner_prep(engine.tok, 32, ["fine", "a" + "bc" * 400], 6, False)


@pytest.mark.parametrize("task", ["ner", "qa"])
def test_work_that_cannot_finish_in_time_is_a_413_before_it_is_all_tokenised(make_engine, monkeypatch, task):
    """Was: a request inside every limit but needing minutes of model work was tokenised whole,
    queued, and ended in a 504 after request_timeout_s, delaying everyone meanwhile."""
    import serving.prep as prep_module
    from serving.limits import RequestError

    eng = make_engine(request_timeout_s=2)
    eng.batcher.speed.tokens_per_s = 200  # as if measured: 200 tokens/s, so 400 tokens fit in 2 s
    calls = []
    real = prep_module.ner_prep
    monkeypatch.setattr(prep_module, "ner_prep", lambda *a: calls.append(1) or real(*a))
    text = "The president spoke to reporters in the capital yesterday evening. " * 60  # ~4 000 chars
    with pytest.raises(RequestError) as e:
        if task == "ner":
            asyncio.run(eng.ner([text] * 40, "en"))
        else:
            asyncio.run(eng.qa("Who spoke?", text * 4, "en"))
    assert e.value.status == 413 and "request_timeout_s 2" in str(e.value) and "tokens/s" in str(e.value)
    assert eng.batcher.queued == 0
    if task == "ner":
        assert len(calls) < 40 / 2, len(calls)  # stopped long before the 40 texts were all tokenised


def test_clearly_hopeless_work_is_refused_from_a_sample_before_any_word_splitting(make_engine, monkeypatch):
    """Was: the first chunk was split into words and windowed before the estimate (one 20 000-character
    text: ~90 ms that every other request waited behind on the prep thread)."""
    import serving.prep as prep_module
    from serving.limits import RequestError

    eng = make_engine(request_timeout_s=2)
    eng.batcher.speed.tokens_per_s = 200
    calls = []
    monkeypatch.setattr(prep_module, "ner_prep", lambda *a: calls.append(1))
    text = "The president spoke to reporters in the capital yesterday evening. " * 250  # 16 750 chars
    with pytest.raises(RequestError) as e:
        asyncio.run(eng.ner([text] * 8, "en"))
    assert e.value.status == 413 and "request_timeout_s 2" in str(e.value)
    assert calls == [] and eng.batcher.queued == 0


@pytest.mark.parametrize("texts", [
    ["The president spoke to reporters in Nairobi."] * 4,  # one chunk: counted, never sampled
    ["The president spoke to reporters in Nairobi. " * 45] * 3,  # 3 chunks of ~2 000 chars: sampled first
])
def test_work_that_fits_is_not_refused(make_engine, texts):
    eng = make_engine(request_timeout_s=60)
    eng.batcher.speed.tokens_per_s = 200
    out = asyncio.run(eng.ner(texts, "en"))
    assert len(out["results"]) == len(texts)


@pytest.mark.parametrize("texts, size, chars", [
    (["abc def"], 100, 7),
    (["a" * 50, "b" * 50, "c" * 50], 80, 80),  # the first 80 characters, text by text
    ([], 100, 0),
])
def test_the_sample_is_the_first_characters_text_by_text(engine, texts, size, chars):
    from serving.prep import sample_tokens

    n, c = sample_tokens(engine.tok, texts, size)
    assert c == chars and (n > 0) == (chars > 0)
