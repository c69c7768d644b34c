"""Property tests on arbitrary Unicode (offsets are exact slices) and an OpenAPI fuzz of the app:
no 5xx, every 4xx has a JSON error body."""

from __future__ import annotations

import asyncio

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from madx.words import invisible
from serving.app import LocalBackend, build_app
from serving.settings import Limits
from serving.text import split_words

UNICODE = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=160)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(UNICODE)
def test_words_are_disjoint_ordered_slices_covering_every_visible_character(text):
    words = split_words(text)
    covered = set()
    last = 0
    for w in words:
        assert text[w.start:w.end] == w.text and w.start >= last and w.end > w.start
        last = w.end
        covered.update(range(w.start, w.end))
    # every character but spaces and invisible format characters (Cf) is inside a word, and no word
    # starts or ends in one of those
    assert {i for i, ch in enumerate(text) if not invisible(ch)} <= covered
    assert not any(invisible(w.text[0]) or invisible(w.text[-1]) for w in words)


@SETTINGS
@given(text=UNICODE.filter(lambda t: t.strip()), language=st.sampled_from([None, "en", "sw", "xx"]))
def test_ner_entities_and_tokens_are_slices_of_the_input(engine, text, language):
    res = asyncio.run(engine.ner([text], language, True))["results"][0]
    for e in res["entities"]:
        assert text[e["start"]:e["end"]] == e["text"] and 0 <= e["score"] <= 1
    for t in res["tokens"]:
        assert 0 <= t["start"] < t["end"] <= len(text)


@SETTINGS
@given(question=UNICODE.filter(lambda t: t.strip()), context=UNICODE.filter(lambda t: t.strip()))
def test_qa_answers_are_slices_of_the_context(engine, question, context):
    from serving.engine import RequestError

    try:
        res = asyncio.run(engine.qa(question, context, "en", top_k=3))
    except RequestError as e:  # e.g. a context with no tokens at all: a clear 422, never a crash
        assert e.status == 422
        return
    for a in res["answers"]:
        assert context[a["start"]:a["end"]] == a["text"]


def test_openapi_fuzz_no_5xx_and_json_errors(make_engine):
    engine = make_engine()  # its own: the ASGI client runs the app on a loop in another thread
    s = engine.s.model_copy(update={"limits": Limits(max_texts=4, max_chars=400, max_question_chars=100)})
    schema = schemathesis.openapi.from_asgi("/openapi.json", build_app(LocalBackend(engine), s, engine.m))
    seen = []
    for result in schema.get_all_operations():
        op = result.ok()

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def fuzz(case):
            resp = case.call()
            assert resp.status_code < 500, (case.method, case.path, case.body, resp.text[:300])
            if resp.status_code >= 400:
                assert "error" in resp.json(), resp.text[:300]
            seen.append(resp.status_code)

        fuzz()
    assert len(seen) >= 100 and any(400 <= c < 500 for c in seen) and 200 in seen
