"""The shipped default adapters on the embedded e5-small backbone: they load (sha256 checked), and
NER on real sentences in several languages finds the expected entities at exact offsets."""

from __future__ import annotations

import asyncio

import pytest

from madx.artifacts import read_manifest
from serving.engine import Engine
from serving.settings import PACKAGED_STORE, load_settings

pytestmark = pytest.mark.e5
LANGS = ["ar", "en", "is", "my", "qu", "rw", "sw", "yo", "zh"]


@pytest.fixture(scope="module")
def engine():
    return Engine(load_settings(env={}))


def test_store_contents_and_size():
    m = read_manifest(PACKAGED_STORE)["adapters"]
    assert sorted(n for n, e in m.items() if e["kind"] == "language") == LANGS
    assert {n: e["task_type"] for n, e in m.items() if e["kind"] == "task"} == {"ner": "ner", "qa": "qa"}
    size = sum(f.stat().st_size for f in PACKAGED_STORE.rglob("*") if f.is_file())
    assert size < 8 * 2**20, size
    for e in m.values():  # provenance travels with every shipped adapter
        assert e["data"] and e["metrics"] and e["trained_as"]


@pytest.mark.parametrize("lang, text, expected", [
    ("en", "Angela Merkel met Emmanuel Macron in Paris on Tuesday.", {("Angela Merkel", "PER"), ("Emmanuel Macron", "PER")}),
    ("sw", "Rais William Ruto alikutana na viongozi mjini Nairobi.", {("William Ruto", "PER")}),
    ("is", "Katrín Jakobsdóttir hitti fulltrúa í Reykjavík.", {("Katrín Jakobsdóttir", "PER")}),
])
def test_ner_on_real_sentences(engine, lang, text, expected):
    res = asyncio.run(engine.ner([text], None))["results"][0]
    assert res["language"] == lang and res["language_source"] == "detected" and res["stack"]["language"] == lang
    got = {(e["text"], e["label"]) for e in res["entities"]}
    assert expected <= got, res["entities"]
    for e in res["entities"]:
        assert text[e["start"]:e["end"]] == e["text"]


def test_qa_answers_from_the_context(engine):
    ctx = "Safaricom is a telecommunications company based in Nairobi, Kenya. It was founded in 1997."
    res = asyncio.run(engine.qa("When was Safaricom founded?", ctx, "en", top_k=3))
    assert res["answers"] and all(ctx[a["start"]:a["end"]] == a["text"] for a in res["answers"])
