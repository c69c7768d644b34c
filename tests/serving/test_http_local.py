"""The HTTP API in one process (no Ray): every endpoint, bad input, auth, limits, metrics."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.app import LocalBackend, build_app
from serving.batcher import Overloaded

KEY = "test-key-7f3a"


def client_for(engine, **over):
    s = engine.s.model_copy(update=over)
    app = build_app(LocalBackend(engine), s, engine.m)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def call(engine, method, path, over=None, **kw):
    async def go():
        async with client_for(engine, **(over or {})) as c:
            return await c.request(method, path, **kw)
    return asyncio.run(go())


def test_endpoints_happy_path(engine):
    r = call(engine, "POST", "/v1/ner", json={"texts": ["Angela Merkel visited Nairobi.", "Rais wa Kenya."], "language": "sw"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["backbone"] == "tiny-xlmr-0+xlmr" and len(body["results"]) == 2
    for text, res in zip(["Angela Merkel visited Nairobi.", "Rais wa Kenya."], body["results"], strict=True):
        assert res["stack"] == {"language": "sw", "task": "ner"} and res["language_source"] == "request"
        assert all(text[e["start"]:e["end"]] == e["text"] for e in res["entities"])
    r = call(engine, "POST", "/v1/qa", json={"question": "Where?", "context": "It is in Nairobi, Kenya.", "top_k": 2})
    assert r.status_code == 200, r.text
    qa = r.json()
    assert qa["language_source"] in ("detected", "undetermined") and len(qa["answers"]) == 2
    r = call(engine, "GET", "/v1/adapters")
    assert r.json()["languages"] == ["de", "en", "sw"] and r.json()["tasks"] == {"ner": "ner", "qa": "qa"}
    assert call(engine, "GET", "/healthz").json() == {"status": "ok"}
    assert call(engine, "GET", "/readyz").json() == {"status": "ready"}
    assert call(engine, "GET", "/openapi.json").status_code == 200 and call(engine, "GET", "/docs").status_code == 200
    m = call(engine, "GET", "/metrics")
    fams = {f.name: f for f in text_string_to_metric_families(m.text)}
    for name in ("madx_request_latency_seconds", "madx_batch_rows", "madx_batch_distinct_stacks", "madx_stack_rows",
                 "madx_queue_rows", "madx_adapter_cache", "madx_adapter_load_seconds", "madx_adapters_resident"):
        assert name in fams, name
    langs = {s.labels.get("language") for s in fams["madx_request_latency_seconds"].samples}
    assert "sw" in langs


LIMITS = {"max_texts": 3, "max_chars": 50, "max_question_chars": 20, "max_body_bytes": 2048, "max_top_k": 5}


@pytest.mark.parametrize("path, body, status, message", [
    ("/v1/ner", b'{"text": "abc"', 400, "malformed JSON"),
    ("/v1/ner", {"text": 5}, 422, "text: Input should be a valid string (got 5)"),
    ("/v1/ner", {}, 422, "give exactly one of 'text' or 'texts'"),
    ("/v1/ner", {"text": "a", "texts": ["b"]}, 422, "exactly one"),
    ("/v1/ner", {"text": "   "}, 422, "text 0 is empty or only whitespace"),
    ("/v1/ner", {"texts": []}, 422, "'texts' is empty"),
    ("/v1/ner", {"text": "a", "lang": "sw"}, 422, "lang: Extra inputs are not permitted"),
    ("/v1/ner", {"text": "a", "language": "!!"}, 422, "language: String should match pattern"),
    ("/v1/ner", {"texts": ["a", "b", "c", "d"]}, 413, "4 texts in one request; the limit is 3"),
    ("/v1/ner", {"text": "x" * 51}, 413, "text 0 has 51 characters; the limit is 50"),
    ("/v1/ner", {"text": "x " * 1100}, 413, "over the limit of 2048 bytes"),
    ("/v1/qa", {"question": "Where?", "context": "y" * 60}, 413, "context has 60 characters; the limit is 50"),
    ("/v1/qa", {"question": "q" * 21, "context": "abc"}, 413, "question has 21 characters; the limit is 20"),
    ("/v1/qa", {"question": "Where?", "context": "abc", "top_k": 6}, 422, "top_k 6 is above the limit 5"),
    ("/v1/qa", {"question": "Where?", "context": "abc", "top_k": 0}, 422, "top_k: Input should be greater than or equal to 1"),
    ("/v1/qa", {"question": "", "context": "abc"}, 422, "question: String should have at least 1 character"),
    ("/v1/pos", {"text": "a"}, 404, "no endpoint POST /v1/pos; endpoints: POST /v1/ner, POST /v1/qa"),
])
def test_bad_input_gets_a_4xx_that_quotes_value_and_rule(engine, path, body, status, message):
    from serving.settings import Limits

    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    r = call(engine, "POST", path, over={"limits": Limits(**LIMITS)}, **kw)
    assert r.status_code == status, r.text
    assert message in r.json()["error"], r.json()
    assert "Traceback" not in r.text


def test_body_limit_also_applies_without_content_length(engine):
    from serving.settings import Limits

    async def chunks():
        for _ in range(10):
            yield b"x" * 512

    async def go():
        async with client_for(engine, limits=Limits(**LIMITS)) as c:
            return await c.post("/v1/ner", content=chunks(), headers={"content-type": "application/json"})
    r = asyncio.run(go())
    assert r.status_code == 413 and "2048 bytes" in r.json()["error"]


@pytest.mark.parametrize("path, method", [("/v1/ner", "POST"), ("/v1/qa", "POST"), ("/v1/adapters", "GET"),
                                          ("/healthz", "GET"), ("/readyz", "GET"), ("/metrics", "GET"),
                                          ("/admin/adapters/de/load", "POST")])
def test_api_key_is_enforced_on_every_endpoint(engine, path, method):
    from pydantic import SecretStr

    over = {"api_key": SecretStr(KEY)}
    for headers in ({}, {"X-API-Key": "wrong"}):
        r = call(engine, method, path, over=over, headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "missing or wrong X-API-Key header"
    body = {"/v1/ner": {"json": {"text": "Nairobi"}}, "/v1/qa": {"json": {"question": "a", "context": "b"}}}.get(path, {})
    r = call(engine, method, path, over=over, headers={"X-API-Key": KEY}, **body)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path, needle", [
    ("/demo", "<title>madx-serve demo</title>"), ("/docs", "swagger-ui"), ("/openapi.json", '"X-API-Key"'),
    ("/static/docs/swagger-ui-bundle.js", "SwaggerUIBundle"),
])
def test_pages_without_data_are_public_and_offline(engine, path, needle):
    """A browser opens these without headers; the demo asks for the key and sends it on every API call."""
    from pydantic import SecretStr

    r = call(engine, "GET", path, over={"api_key": SecretStr(KEY)})
    assert r.status_code == 200 and needle in r.text
    assert "cdn.jsdelivr.net" not in r.text and "unpkg.com" not in r.text  # nothing from a CDN


def test_admin_needs_a_configured_key_always(engine):
    r = call(engine, "POST", "/admin/adapters/de/load")
    assert r.status_code == 403 and "no API key is configured" in r.json()["error"]
    r = call(engine, "DELETE", "/admin/adapters/de")
    assert r.status_code == 403


def test_admin_load_unload_over_http(make_engine):
    from pydantic import SecretStr

    eng = make_engine()
    over, h = {"api_key": SecretStr(KEY)}, {"X-API-Key": KEY}
    assert call(eng, "DELETE", "/admin/adapters/de", over=over, headers=h).json() == {"unloaded": "de"}
    assert "de" not in call(eng, "GET", "/v1/adapters", over=over, headers=h).json()["languages"]
    r = call(eng, "POST", "/admin/adapters/de/load", over=over, headers=h)
    assert r.status_code == 200 and r.json()["loaded"] == "de"
    r = call(eng, "POST", "/admin/adapters/xx/load", over=over, headers=h, json={"path": "/nonexistent"})
    assert r.status_code == 422 and "outside the directories admin loads may read" in r.json()["error"]
    r = call(eng, "POST", "/admin/adapters/xx/load", over=over, headers=h, json={"path": "nonexistent"})  # in the store
    assert r.status_code == 422 and "does not exist" in r.json()["error"] and "<store>" in r.json()["error"]


def test_overload_is_503_with_retry_after(make_engine):
    eng = make_engine(batching={"max_queue_rows": 2})
    eng.batcher.admit = lambda rows: (_ for _ in ()).throw(Overloaded("2 windows are queued (limit 2)"))
    r = call(eng, "POST", "/v1/ner", json={"texts": ["a", "b"], "language": "en"})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1" and "at capacity" in r.json()["error"]
    r = call(make_engine(batching={"max_queue_rows": 2}), "POST", "/v1/ner", json={"texts": ["a", "b", "c"], "language": "en"})
    assert r.status_code == 413 and "limits.max_windows" in r.json()["error"]  # could never fit: not a retry


def test_ingress_admission_refuses_beyond_max_inflight_at_once(make_engine, monkeypatch):
    eng = make_engine()
    release = asyncio.Event()
    orig = eng.ner

    async def slow(*a, **k):  # the backbone is busy until released
        await release.wait()
        return await orig(*a, **k)

    monkeypatch.setattr(eng, "ner", slow)

    async def go():
        async with client_for(eng, ingress_max_inflight=2) as c:
            tasks = [asyncio.create_task(c.post("/v1/ner", json={"text": "Angela Merkel", "language": "en"}))
                     for _ in range(6)]
            await asyncio.sleep(0.2)
            early = [t.result() for t in tasks if t.done()]  # refused without waiting for the backbone
            release.set()
            return early, await asyncio.gather(*tasks)

    early, rs = asyncio.run(go())
    assert len(early) == 4 and all(r.status_code == 503 for r in early)
    assert all(r.headers["Retry-After"] == "1" and "ingress_max_inflight 2" in r.json()["error"] for r in early)
    assert sorted(r.status_code for r in rs) == [200, 200, 503, 503, 503, 503]
    assert call(eng, "POST", "/v1/ner", over={"ingress_max_inflight": 2},
                json={"text": "a b", "language": "en"}).status_code == 200  # the counter came back down


@pytest.mark.parametrize("over, want", [
    ({}, 2048), ({"backbone_replicas": 3}, 3 * 2048), ({"autoscaling": {"max_replicas": 5}}, 5 * 2048),
    ({"batching": {"max_queue_rows": 10}}, 10), ({"ingress_max_inflight": 7}, 7),
])
def test_default_max_inflight_follows_queue_and_replicas(over, want):
    from serving.settings import load_settings

    assert load_settings(env={}, **over).max_inflight == want


def test_internal_errors_never_leak_details(engine, monkeypatch):
    async def boom(*a, **k):
        raise RuntimeError("secret internals /etc/passwd")
    monkeypatch.setattr(engine, "ner", boom)
    r = call(engine, "POST", "/v1/ner", json={"text": "abc"})
    assert r.status_code == 500 and "internal error (id " in r.json()["error"]
    assert "secret" not in r.text and "Traceback" not in r.text
    json.loads(r.text)


def test_burst_of_ten_times_capacity_gets_503s_and_recovers(make_engine):
    eng = make_engine(batching={"max_queue_rows": 8, "max_wait_ms": 20})

    async def go():
        async with client_for(eng) as c:
            burst = await asyncio.gather(*(c.post("/v1/ner", json={"text": f"Rais wa Kenya {i}", "language": "sw"})
                                           for i in range(80)))
            after = await c.post("/v1/ner", json={"text": "Rais wa Kenya", "language": "sw"})
            return burst, after

    burst, after = asyncio.run(go())
    codes = [r.status_code for r in burst]
    assert set(codes) == {200, 503} and codes.count(200) >= 8
    assert all(r.headers["Retry-After"] == "1" for r in burst if r.status_code == 503)
    assert after.status_code == 200  # recovered without a restart
    assert eng.batcher.queued == 0
