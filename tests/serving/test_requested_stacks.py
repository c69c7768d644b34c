"""Stacks chosen per request (serving/requested.py): any served route or explicit adapters, checked
against what is loaded, reported as route 'requested', and exact when requests with different
stacks share forward passes."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from serving.app import LocalBackend, build_app
from serving.engine import RequestError

TEXT = "Rais wa Kenya alizungumza na Angela Merkel mjini Nairobi."


@pytest.mark.parametrize("stack, language, stacks", [
    ({"route": "task_only"}, "sw", [{"language": None, "task": "ner"}]),
    ({"route": "madx"}, "sw", [{"language": "sw", "task": "ner"}]),
    ({"route": "english"}, "sw", [{"language": "en", "task": "ner"}]),
    ({"route": "related:de"}, "sw", [{"language": "de", "task": "ner"}]),
    ({"route": "ensemble:sw+de"}, "sw", [{"language": "sw", "task": "ner"}, {"language": "de", "task": "ner"}]),
    ({"route": "ensemble:sw+none"}, "sw", [{"language": "sw", "task": "ner"}, {"language": None, "task": "ner"}]),
    ({"language_adapter": "de", "task_adapter": "ner"}, "sw", [{"language": "de", "task": "ner"}]),
    ({"task_adapter": "ner"}, None, [{"language": None, "task": "ner"}]),
    ({"language_adapter": "en"}, None, [{"language": "en", "task": "ner"}]),
])
def test_a_requested_stack_is_run_and_reported(engine, stack, language, stacks):
    res = asyncio.run(engine.ner([TEXT], language, False, stack))["results"][0]
    assert res["route"] == "requested" and res["route_reason"].startswith("requested: ")
    assert (res["stacks"] or [res["stack"]]) == stacks


@pytest.mark.parametrize("stack, message", [
    ({"language_adapter": "yo"}, "stack.language_adapter 'yo' is not served; served language adapters: ['de', 'en', 'sw']"),
    ({"task_adapter": "qa"}, "stack.task_adapter 'qa' is not a served ner task adapter; served: ['ner']"),
    ({"route": "related:yo"}, "needs language adapters ['yo'], which are not served; served language adapters"),
    ({"route": "madx", "language_adapter": "sw"}, "give a route or a language_adapter, not both"),
])
def test_a_stack_naming_anything_else_is_a_422_listing_what_is_served(engine, stack, message):
    with pytest.raises(RequestError) as e:
        asyncio.run(engine.ner([TEXT], "sw", False, stack))
    assert e.value.status == 422 and message in e.value.message


def test_requested_stacks_are_counted(engine):
    before = engine.m.registry.get_sample_value("madx_requested_stacks_total",
                                                {"replica": "local", "task": "qa", "route": "explicit"}) or 0
    asyncio.run(engine.qa("Who spoke?", TEXT, "sw", stack={"language_adapter": "sw"}))
    after = engine.m.registry.get_sample_value("madx_requested_stacks_total",
                                               {"replica": "local", "task": "qa", "route": "explicit"})
    assert after == before + 1


def test_requests_with_different_stacks_in_one_pass_equal_each_alone_over_http(make_engine):
    eng = make_engine(batching={"max_wait_ms": 200})  # the concurrent requests share passes
    app = build_app(LocalBackend(eng), eng.s, eng.m)
    stacks = [{"route": "task_only"}, {"language_adapter": "sw"}, {"language_adapter": "de"}, {"route": "english"},
              {"route": "ensemble:sw+en"}, {"route": "ensemble:de+none"}, None]

    async def post(c, stack):
        body = {"text": TEXT, "language": "sw", "return_tokens": True, **({"stack": stack} if stack else {})}
        r = await c.post("/v1/ner", json=body)
        assert r.status_code == 200, r.text
        return r.json()["results"][0]

    async def together():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await asyncio.gather(*(post(c, s) for s in stacks))

    async def alone():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return [await post(c, s) for s in stacks]
    rows_before = eng.m.registry.get_sample_value("madx_batch_rows_count", {"replica": "local"}) or 0
    mixed = asyncio.run(together())
    passes = (eng.m.registry.get_sample_value("madx_batch_rows_count", {"replica": "local"}) or 0) - rows_before
    single = [asyncio.run(alone())[i] for i in range(len(stacks))]
    assert passes < len(stacks) + 2  # 9 stacks' rows (each ensemble runs two) went through fewer passes
    for m, s in zip(mixed, single, strict=True):
        assert m["stack"] == s["stack"] and m["route"] == s["route"]
        assert [t["score"] for t in m["tokens"]] == pytest.approx([t["score"] for t in s["tokens"]], abs=1e-5)
    scores = {str(s): tuple(t["label"] for t in m["tokens"]) for s, m in zip(stacks, mixed, strict=True)}
    assert len(set(scores.values())) > 1  # the stacks really differ
