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


# a store with a second stacked NER adapter, 'ner-en', and evidence that sw is best served through it
NAMED_EVIDENCE = {"evidence": {"sw": {"ner": {
    "measured_on": "sw", "metric": "F1", "scores": {"task_only": 50.0, "madx": 52.0, "madx@ner-en": 60.0},
    "vs_task_only": {"madx": {"delta": 2.0, "low": -1.0, "high": 5.0}, "madx@ner-en": {"delta": 10.0, "low": 5.0, "high": 15.0}},
    "bootstrap": {"resamples": 100, "interval": 0.95, "examples": 50, "unit": "sentences"}}}}}


@pytest.fixture(scope="module")
def named_engine(make_engine, tmp_path_factory):
    from madx.artifacts import update_manifest

    from .tiny_store import make_store

    store = make_store(tmp_path_factory.mktemp("named"), more_ner=("ner-en",))
    update_manifest(store, lambda m: m.__setitem__("routing", NAMED_EVIDENCE))
    return make_engine(store=store)


def test_a_route_naming_its_task_adapter_is_served_by_evidence_and_on_request(named_engine):
    def ner(stack=None):
        return asyncio.run(named_engine.ner([TEXT], "sw", True, stack))["results"][0]
    routed = ner()
    assert (routed["route"], routed["stack"], routed["fallback"]) == ("madx@ner-en", {"language": "sw", "task": "ner-en"}, None)
    assert "beats task_only beyond noise (+10.0" in routed["route_reason"]
    asked = ner({"route": "madx@ner-en"})
    assert asked["route"] == "requested" and asked["stack"] == {"language": "sw", "task": "ner-en"}
    explicit, other = ner({"language_adapter": "sw", "task_adapter": "ner-en"}), ner({"language_adapter": "sw"})
    scores = lambda r: [t["score"] for t in r["tokens"]]  # noqa: E731
    assert scores(routed) == pytest.approx(scores(explicit), abs=1e-6)
    assert scores(asked) == pytest.approx(scores(explicit), abs=1e-6)
    assert scores(routed) != pytest.approx(scores(other), abs=1e-3)  # the two task adapters really differ


@pytest.mark.parametrize("stack, message", [
    ({"route": "madx@qa"}, "needs task adapter 'qa', which is not served; served task adapters: ['ner', 'ner-en']"),
    ({"route": "madx@ner-en", "task_adapter": "ner"}, "names its task adapter; give it there or in task_adapter, not both"),
])
def test_a_route_naming_a_task_adapter_that_is_not_served_is_a_422(named_engine, stack, message):
    with pytest.raises(RequestError) as e:
        asyncio.run(named_engine.ner([TEXT], "sw", False, stack))
    assert e.value.status == 422 and message in e.value.message, e.value.message
