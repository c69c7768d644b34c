"""Client input that used to give 500: every one is a 4xx with a JSON body
that quotes a shortened, JSON-safe echo of the bad value."""

from __future__ import annotations

import pytest

from .test_http_local import call

NER = b'{"text": "Rais wa Kenya."}'


@pytest.mark.parametrize("headers, body", [
    ({}, NER),  # curl -d without a content type
    ({"content-type": "text/plain"}, NER),
    ({"content-type": "application/x-www-form-urlencoded"}, b"text=a"),
    ({"content-type": "multipart/form-data; boundary=x"},
     b'--x\r\nContent-Disposition: form-data; name="text"\r\n\r\na\r\n--x--\r\n'),
    ({"content-type": "application/xml"}, b"<text>a</text>"),
])
def test_wrong_or_missing_content_type_is_415(engine, headers, body):
    for path in ("/v1/ner", "/v1/qa"):
        r = call(engine, "POST", path, content=body, headers=headers)
        assert r.status_code == 415, (path, r.status_code, r.text)
        assert "application/json" in r.json()["error"]


@pytest.mark.parametrize("path, body", [
    ("/v1/ner", b'{"text": NaN}'),
    ("/v1/ner", b'{"texts": ["a", Infinity]}'),
    ("/v1/qa", b'{"question": "q", "context": "c", "top_k": -Infinity}'),
    ("/v1/qa", b'{"question": NaN, "context": "c"}'),
])
def test_nan_and_infinity_literals_are_422(engine, path, body):
    r = call(engine, "POST", path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]


@pytest.mark.parametrize("path, body", [
    ("/v1/ner", {"text": "Rais \ud800 Kenya"}),
    ("/v1/ner", {"texts": ["ok", "\udfff"]}),
    ("/v1/ner", {"text": "ok", "language": "s\ud800w"}),
    ("/v1/qa", {"question": "wh\ud800o?", "context": "Nairobi."}),
    ("/v1/qa", {"question": "who?", "context": "Nai\udbffrobi."}),
    ("/v1/qa", {"question": "who?", "context": "Nairobi.", "language": "\ud800"}),
    ("/v1/ner", {"text": "ok", "\ud800": 1}),  # an unknown field whose name is a lone surrogate
])
def test_lone_surrogates_are_422(engine, path, body):
    import json

    raw = json.dumps(body).encode()  # ASCII JSON with \\ud800 escapes, as a client would send it
    r = call(engine, "POST", path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "surrogate" in r.json()["error"] or "\\ud800" in r.json()["error"]


@pytest.mark.parametrize("value, where", [
    ("ok", None),
    ("", None),
    ("a\ud800", (1, "\ud800")),
    ("\U0001F600\u00e9\udc00x", (2, "\udc00")),  # indexes count code points, a non-BMP character is one
    (["fine", "\u4e2d\udfffz"], (1, "\udfff")),  # the index within the item that holds it
    (["x" * 100_000 + "\ud800"], (100_000, "\ud800")),
    (7, None),
])
def test_the_first_lone_surrogate_is_found_with_its_index(value, where):
    from serving.schemas import _surrogate

    assert _surrogate(value) == where


def test_a_long_bad_value_is_echoed_short(engine):
    r = call(engine, "POST", "/v1/ner", json={"text": 12345, "language": "x" * 20000})
    assert r.status_code == 422 and len(r.text) < 2000, len(r.text)


@pytest.mark.parametrize("context", [" \u200b ", "\u200b\u200b", "\u200e \u202c"])
def test_qa_never_answers_with_invisible_or_empty_text(engine, context):
    r = call(engine, "POST", "/v1/qa", json={"question": "Who?", "context": context, "language": "en"})
    assert r.status_code == 422 and "no visible characters" in r.json()["error"], r.text


def test_qa_answers_never_start_or_end_invisibly(engine):
    ctx = "Nairobi\u200b is\u200e the\u202c capital\u200b."
    r = call(engine, "POST", "/v1/qa", json={"question": "What?", "context": ctx, "language": "en", "top_k": 10})
    assert r.status_code == 200 and r.json()["answers"]
    for a in r.json()["answers"]:
        assert a["text"] == ctx[a["start"]:a["end"]] and a["text"].strip("\u200b\u200e\u202c ") == a["text"]


def test_an_over_long_word_is_not_echoed_whole(engine):
    r = call(engine, "POST", "/v1/ner", json={"text": "x" * 20000, "language": "en"})
    assert r.status_code == 422 and len(r.json()["error"]) < 300 and "(20000 characters)" in r.json()["error"]
