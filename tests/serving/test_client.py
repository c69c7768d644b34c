"""The Python client against the real app (in process): routing fields come back with every result."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from serving.app import LocalBackend, build_app
from serving.client import ROUTING, MadxClient, MadxError

KEY = "client-key-2b7e"


@pytest.fixture
def client(engine):
    s = engine.s.model_copy(update={"api_key": SecretStr(KEY)})
    with TestClient(build_app(LocalBackend(engine), s, engine.m)) as http:
        yield MadxClient(http=http, api_key=KEY), http


def test_ner_returns_entities_with_the_route(client):
    c, _ = client
    r = c.ner("Angela Merkel visited Nairobi.", language="sw")
    assert set(ROUTING) <= set(r) and "entities" in r and "windows" in r
    assert r["language"] == "sw" and r["language_source"] == "request" and r["stack"] == {"language": "sw", "task": "ner"}
    assert all("Angela Merkel visited Nairobi."[e["start"]:e["end"]] == e["text"] for e in r["entities"])


def test_ner_batch_keeps_order_and_per_text_routes(client):
    c, _ = client
    rs = c.ner_batch(["Rais wa Kenya.", "Angela Merkel."], language="de")
    assert len(rs) == 2 and all(r["language"] == "de" and set(ROUTING) <= set(r) for r in rs)
    assert c.ner_full(["Rais wa Kenya."])["backbone"]


def test_qa_returns_answers_with_the_route(client):
    c, _ = client
    r = c.qa("Where?", "It is in Nairobi, Kenya.", language="en", top_k=2)
    assert set(ROUTING) <= set(r) and len(r["answers"]) == 2 and r["stack"]["task"] == "qa"


@pytest.mark.parametrize("call, status, needle", [
    (lambda c: c.ner(" "), 422, "empty or only whitespace"),
    (lambda c: c.qa("Where?", "x", top_k=10_000), 422, "top_k"),
])
def test_errors_raise_with_the_servers_message(client, call, status, needle):
    c, _ = client
    with pytest.raises(MadxError) as e:
        call(c)
    assert e.value.status == status and needle in e.value.message


def test_a_wrong_key_is_a_401(client):
    _, http = client
    c = MadxClient(http=http, api_key="wrong")
    with pytest.raises(MadxError) as e:
        c.adapters()
    assert e.value.status == 401
