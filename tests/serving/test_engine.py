"""The Ray-free serving core: routing and fallback, mixed batches, windows, cache tiers, faults."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest

from madx.artifacts import ArtifactError
from madx.config import AdapterStack
from serving.batcher import Overloaded, plan_batches
from serving.engine import RequestError

from .tiny_store import TEXT

LONG = " ".join(["Rais wa Kenya alizungumza na waandishi wa habari mjini Nairobi jana jioni."] * 40)


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("language, fallback_mode, want", [
    ("sw", "related", ("sw", "request", None)),
    ("SW", "related", ("sw", "request", None)),
    # codes are canonicalised by langcodes + iso639-lang before routing: aliases are the language itself
    ("swa", "related", ("sw", "request", None)),  # ISO 639-2/3
    ("swh", "strict", ("sw", "request", None)),  # individual language of the sw macrolanguage
    ("sw-KE", "related", ("sw", "request", None)),  # BCP-47 region subtag
    ("sw_TZ", "strict", ("sw", "request", None)),
    ("ger", "related", ("de", "request", None)),  # ISO 639-2/B
    ("run", "related", (None, "request", "task_only")),  # Kirundi: a relative of rw, which this store lacks
    ("fr", "related", (None, "request", "task_only")),
    ("fr", "task_only", (None, "request", "task_only")),
    ("fr", "strict", 422),
    ("swa", "task_only", ("sw", "request", None)),
])
def test_routing_and_fallback(make_engine, engine, language, fallback_mode, want):
    eng = engine if fallback_mode == "related" else make_engine(fallback={"mode": fallback_mode})
    if want == 422:
        with pytest.raises(RequestError) as e:
            eng.route("ner", language, "x")
        assert e.value.status == 422 and "'fr' has no adapter" in e.value.message and "['de', 'en', 'sw']" in e.value.message
        return
    r = eng.route("ner", language, "x")
    assert (r.stack.language, r.source, r.fallback) == want
    assert r.stack.task == "ner"


def test_related_map_applies_to_canonical_codes(make_engine):
    eng = make_engine(fallback={"mode": "related", "related": {"rn": "sw"}})
    r = eng.route("ner", "run", "x")  # ISO 639-3 'run' is canonical 'rn'
    assert (r.language, r.stack.language, r.fallback) == ("rn", "sw", "related:sw")


@pytest.mark.parametrize("language, fallback_mode, want", [
    ("sw", "related", (None, "sw", "task_only:trained_alone")),
    ("swa", "related", (None, "sw", "task_only:trained_alone")),
    ("fr", "related", (None, "fr", "task_only:trained_alone")),
    ("sw", "strict", (None, "sw", "task_only:trained_alone")),
    ("fr", "strict", 422),  # strict still refuses a language without an adapter
])
def test_a_task_adapter_trained_alone_is_served_alone(make_engine, tiny_store, tmp_path, language, fallback_mode, want):
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    m = json.loads((store / "manifest.json").read_text())
    m["adapters"]["ner"]["metrics"] = {"trained_on_language_adapter": None}
    (store / "manifest.json").write_text(json.dumps(m))
    eng = make_engine(store=store, fallback={"mode": fallback_mode})
    if want == 422:
        with pytest.raises(RequestError) as e:
            eng.route("ner", language, "x")
        assert e.value.status == 422
        return
    r = eng.route("ner", language, "x")
    assert (r.stack.language, r.language, r.fallback) == want
    assert eng.route("qa", "sw", "x").stack.language == "sw"  # qa has no such record: a MAD-X stack as before


def test_detection_reports_language_and_confidence(engine):
    for lang, lines in TEXT.items():
        r = engine.route("ner", None, lines[0])
        assert (r.language, r.source, r.stack.language) == (lang, "detected", lang)
        assert 0.5 <= r.confidence <= 1.0
    r = engine.route("ner", None, "12345 !!!")
    assert (r.source, r.stack.language, r.fallback) == ("undetermined", None, "task_only")


def test_unknown_task_is_404(make_engine):
    eng = make_engine(tasks={"ner": "ner"})
    with pytest.raises(RequestError) as e:
        eng.route("qa", "en", "x")
    assert e.value.status == 404 and "task 'qa' is not served" in e.value.message


def test_mixed_language_burst_equals_single_requests(engine):
    src = ["en", "sw", "de", "de", "sw"] * 3  # text language; requested: en, sw, de, fr (fallback), None (detect)
    asked = ["en", "sw", "de", "fr", None] * 3
    reqs = [("ner", [TEXT[s][i % 3]], lang) for i, (s, lang) in enumerate(zip(src, asked, strict=True))]
    reqs.append(("qa", ["Where did the president speak?", TEXT["en"][0]], "en"))
    reqs.append(("qa", ["Rais alizungumza wapi?", TEXT["sw"][0] + " " + LONG], "sw"))

    def call(r):
        task, args, lang = r
        return engine.ner(args, lang, True) if task == "ner" else engine.qa(args[0], args[1], lang, 3)

    async def both():
        alone = [await call(r) for r in reqs]
        stacks_before = engine.m.registry.get_sample_value("madx_batch_distinct_stacks_sum", {"replica": "local"})
        count_before = engine.m.registry.get_sample_value("madx_batch_distinct_stacks_count", {"replica": "local"})
        burst = await asyncio.gather(*(call(r) for r in reqs))
        s = engine.m.registry.get_sample_value("madx_batch_distinct_stacks_sum", {"replica": "local"}) - stacks_before
        c = engine.m.registry.get_sample_value("madx_batch_distinct_stacks_count", {"replica": "local"}) - count_before
        return alone, burst, s / c

    alone, burst, stacks_per_batch = run(both())
    assert stacks_per_batch > 2, "the burst should have shared forward passes across stacks"
    for a, b in zip(alone, burst, strict=True):
        ra = a["results"][0] if "results" in a else a
        rb = b["results"][0] if "results" in b else b
        assert ra["stack"] == rb["stack"]
        for key in ("entities", "answers", "tokens"):
            xs, ys = ra.get(key) or [], rb.get(key) or []
            assert [(x["start"], x["end"], x.get("label")) for x in xs] == [(y["start"], y["end"], y.get("label")) for y in ys]
            assert all(abs(x["score"] - y["score"]) < 1e-3 for x, y in zip(xs, ys, strict=True))


def test_long_text_uses_windows_and_keeps_every_word(engine):
    res = run(engine.ner([LONG], "sw", True))["results"][0]
    assert res["windows"] > 1
    assert res["tokens"][-1]["end"] == len(LONG) - 1 or res["tokens"][-1]["end"] == len(LONG)
    from serving.text import split_words

    covered = set()  # every character of every word is carried by a returned sub-word
    for t in res["tokens"]:
        assert LONG[t["start"]:t["end"]] == t["text"] and t["token"].lstrip("▁") != ""
        covered.update(range(t["start"], t["end"]))
    assert covered == {i for w in split_words(LONG) for i in range(w.start, w.end)}
    for e in res["entities"]:
        assert LONG[e["start"]:e["end"]] == e["text"]


def test_qa_long_context_windows_and_offsets(engine):
    ctx = LONG + " The answer is Mombasa."
    res = run(engine.qa("Where?", ctx, "sw", top_k=4))
    assert res["windows"] > 1 and 1 <= len(res["answers"]) <= 4
    for a in res["answers"]:
        assert ctx[a["start"]:a["end"]] == a["text"] and a["text"] == a["text"].strip()
    assert [a["score"] for a in res["answers"]] == sorted((a["score"] for a in res["answers"]), reverse=True)


@pytest.mark.parametrize("max_cpu, tier", [(8, "cpu"), (0, "disk")])
def test_lru_cache_tiers_give_identical_results(make_engine, engine, max_cpu, tier):
    small = make_engine(cache={"max_device_adapters": 2, "max_cpu_adapters": max_cpu})
    assert len(small.cache.device) == 2  # everything validated at start, only 2 resident

    async def go(eng):
        return [await eng.ner([TEXT[lang][0]], lang, False) for lang in ["en", "sw", "de", "en", "sw"]]

    got, want = run(go(small)), run(go(engine))
    for g, w in zip(got, want, strict=True):
        assert g["results"][0]["entities"] == w["results"][0]["entities"]
    misses = small.m.registry.get_sample_value("madx_adapter_cache_total", {"replica": "local", "result": "miss", "tier": tier})
    assert misses and misses >= 3


def test_corrupted_adapter_is_refused_and_the_rest_serve(make_engine, tiny_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    w = store / "sw" / "adapter.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\x00" * 8)
    eng = make_engine(store=store)
    refused = eng.describe()["fallback"]["refused_adapters"]
    assert list(refused) == ["sw"] and "sha256" in refused["sw"] and "refusing this adapter" in refused["sw"]
    assert eng.languages() == ["de", "en"]
    assert run(eng.ner(["Habari"], "sw", False))["results"][0]["fallback"] == "task_only"


def _store(tmp, files: dict[str, str] | None) -> object:
    """A store directory with these files; None -> a regular file where the store should be."""
    if files is None:
        (tmp / "f").write_text("x")
        return tmp / "f"
    d = tmp / "s"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    return d


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "missing", "is not a readable directory"),
    (lambda p: _store(p, None), "is not a readable directory"),
    (lambda p: _store(p, {"manifest.json": "{oops"}), "invalid JSON"),
    (lambda p: _store(p, {}), "has no adapters"),
    (lambda p: _store(p, {"manifest.json": '{"format": "other"}'}), "is not 'madx-serve/store@1'"),
])
def test_bad_store_is_a_clear_startup_error(make_engine, tmp_path, setup, message):
    with pytest.raises(ArtifactError, match=message):
        make_engine(store=setup(tmp_path))


def test_admin_unload_load_and_pickle_refusal(make_engine, tmp_path):
    eng = make_engine(admin_roots=[str(tmp_path)])
    run(eng.admin_unload("de"))
    assert "de" not in eng.languages() and "de" not in eng.detector.profiles.profiles  # CLD2 still names de
    assert run(eng.ner(["Hallo"], "de", False))["results"][0]["fallback"] == "task_only"
    assert run(eng.admin_load("de", None))["loaded"] == "de"
    assert run(eng.ner(["Hallo"], "de", False))["results"][0]["stack"]["language"] == "de"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "pytorch_adapter.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(RequestError) as e:
        run(eng.admin_load("evil", str(evil)))
    assert e.value.status == 422 and "pickle is never loaded" in e.value.message
    with pytest.raises(RequestError) as e:
        run(eng.admin_unload("nope"))
    assert e.value.status == 404
    for task in ("qa", "ner"):  # a task's adapter: refused, the task keeps serving (see test_lifecycle)
        with pytest.raises(RequestError) as e:
            run(eng.admin_unload(task))
        assert e.value.status == 409 and f"adapter {task!r} is tasks.{task}" in e.value.message


def test_overload_refuses_at_once(make_engine):
    eng = make_engine(batching={"max_queue_rows": 3, "max_wait_ms": 1000})  # the first rows wait while the second arrives

    async def two():  # the first request's windows fill the queue; the second is refused at once
        return await asyncio.gather(eng.ner(["a b", "c d"], "en", False), eng.ner(["e f", "g h"], "en", False),
                                    return_exceptions=True)
    first, second = run(two())
    assert first["results"] and isinstance(second, Overloaded) and "limit 3" in str(second)
    assert run(eng.ner(["a b"], "en", False))["results"]  # and it keeps serving


def test_a_request_that_could_never_be_queued_is_413_not_503(make_engine):
    """It was a 503 whose retries could never succeed."""
    eng = make_engine(batching={"max_queue_rows": 3})
    with pytest.raises(RequestError) as e:
        run(eng.ner(["a b", "c d", "e f", "g h"], "en", False))
    assert e.value.status == 413 and "needs 4 model windows; the limit is 3 (limits.max_windows)" in e.value.message
    assert eng.batcher.queued == 0


@pytest.mark.parametrize("lengths, budget, rows, want", [
    ([5, 1, 3], 100, 8, [[1, 2, 0]]),
    ([10, 10, 10, 2], 20, 8, [[3, 0], [1, 2]]),
    ([50], 10, 8, [[0]]),  # longer than the budget: alone, never dropped
    ([1, 1, 1], 100, 2, [[0, 1], [2]]),
])
def test_plan_batches(lengths, budget, rows, want):
    assert plan_batches(lengths, budget, rows) == want


@pytest.mark.parametrize("policy", ["group_by_stack", "per_request"])
def test_comparison_policies_give_the_same_answers(make_engine, engine, policy):
    other = make_engine(batching={"policy": policy})

    async def burst(eng):
        return await asyncio.gather(*(eng.ner([TEXT[lang][i % 3]], lang, False)
                                      for i, lang in enumerate(["en", "sw", "de"] * 3)))

    for a, b in zip(run(burst(engine)), run(burst(other)), strict=True):
        ea, eb = a["results"][0]["entities"], b["results"][0]["entities"]
        assert [(e["start"], e["end"], e["label"]) for e in ea] == [(e["start"], e["end"], e["label"]) for e in eb]
    rows = other.m.registry.get_sample_value("madx_batch_distinct_stacks_sum", {"replica": "local"})
    passes = other.m.registry.get_sample_value("madx_batch_distinct_stacks_count", {"replica": "local"})
    assert rows == passes  # never more than one stack per pass


def test_serving_path_never_unpickles():
    """Security: nothing under serving/ (nor the artifact loader) can deserialize pickle."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for f in [*(root / "serving").glob("*.py"), root / "madx" / "artifacts.py"]:
        text = f.read_text()
        for bad in ("import pickle", "torch.load(", "cloudpickle", "pickle.load"):
            assert bad not in text, f"{f.name} contains {bad!r}"


@pytest.mark.parametrize("text, status, message", [
    ("\x7f\x7f", None, None),  # characters the tokenizer drops: no tokens, no entities, no error
    ("x" * 2000, 422, "text 0: word 'xxxx"),  # one word longer than a window: refused, never cut
])
def test_texts_without_tokens_or_with_huge_words(engine, text, status, message):
    if status is None:
        res = run(engine.ner([text], "en", True))["results"][0]
        assert res["entities"] == [] and res["windows"] == 0
        return
    with pytest.raises(RequestError) as e:
        run(engine.ner([text], "en", False))
    assert e.value.status == status and message in e.value.message


def test_text_in_a_script_no_served_language_uses_is_undetermined(engine):
    r = engine.route("ner", None, "Владимир Путин встретился с делегацией в Москве.")
    assert (r.source, r.stack.language, r.fallback) == ("undetermined", None, "task_only")


@pytest.mark.parametrize("call", ["ner", "qa"])
def test_full_queue_refuses_before_routing_and_tokenising(make_engine, monkeypatch, call):
    eng = make_engine(batching={"max_queue_rows": 2})
    from madx.config import AdapterStack
    from serving.batcher import Row

    # two windows already waiting (no worker runs them in this test): the queue is full
    eng.batcher.queue.extend(Row([1, 2], AdapterStack(None, "ner"), None) for _ in range(2))

    def no(*a, **k):
        raise AssertionError("a refused request must not be routed or tokenised")

    monkeypatch.setattr(eng, "route", no)
    with pytest.raises(Overloaded, match="2 windows are queued"):
        if call == "ner":
            run(eng.ner(["Angela Merkel"], "en", False))
        else:
            run(eng.qa("Who?", "Angela Merkel", "en"))
    eng.batcher.queue.clear()
    monkeypatch.undo()
    assert run(eng.ner(["a b"], "en", False))["results"]  # and it keeps serving


@pytest.mark.parametrize("text", ["国家主席习近平在北京会见了美国总统拜登。", "東京都知事の小池百合子は大阪を訪れた。",
                                  "Nabonye y'u n'inshuti ya Thiong'o."])
def test_ner_tokens_carry_characters_and_cjk_runs_are_not_marker_pairs(engine, text):
    res = run(engine.ner([text], "sw", True))["results"][0]
    pieces = [t["token"] for t in res["tokens"]]
    assert all(p.strip("▁") for p in pieces)  # no bare "▁" piece carries a label
    if not text.isascii() and " " not in text:  # one unspaced run: the marker only where the text starts
        assert not any(p.startswith("▁") for p in pieces[1:]), pieces
    for t in res["tokens"]:
        assert text[t["start"]:t["end"]] == t["text"] == t["token"].lstrip("▁").replace("▁", " ") or t["token"] == "<unk>"


ROUTING = {"evidence": {"sw": {"ner": {"measured_on": "sw", "metric": "F1",
                                       "scores": {"madx": 50.0, "task_only": 52.0, "ensemble:sw+de": 55.0}}},
                        "de": {"ner": {"measured_on": "de", "metric": "F1", "scores": {"madx": 60.0, "task_only": 52.0}}}},
           "default": {"ner": {"route": "english", "over": ["yo", "ig"], "scores": {"english": 30.0, "task_only": 29.0}}}}


def routed_store(tiny_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    m = json.loads((store / "manifest.json").read_text())
    m["routing"] = ROUTING
    (store / "manifest.json").write_text(json.dumps(m))
    return store


@pytest.fixture
def routed_engine(make_engine, tiny_store, tmp_path):
    return make_engine(store=routed_store(tiny_store, tmp_path))


@pytest.mark.parametrize("language, route, stacks, fallback", [
    ("sw", "ensemble:sw+de", [("sw", "ner"), ("de", "ner")], "ensemble:sw+de"),
    ("de", "madx", [("de", "ner")], None),
    ("fr", "english", [("en", "ner")], "english"),  # no evidence: the best route over unseen languages
])
def test_the_store_routes_by_evidence(routed_engine, language, route, stacks, fallback):
    res = run(routed_engine.ner(["Rais wa Kenya alizungumza na waandishi wa habari."], language))["results"][0]
    assert (res["route"], res["fallback"]) == (route, fallback)
    assert [(s["language"], s["task"]) for s in (res["stacks"] or [res["stack"]])] == stacks
    assert res["route_reason"]
    assert routed_engine.describe()["routing"]["evidence"] == ROUTING["evidence"]


@pytest.mark.parametrize("evidence_key, asked", [("tw", "tw"), ("tw", "ak"), ("twi", "tw"), ("ak", "tw")])
def test_evidence_under_a_language_alias_is_found(make_engine, tiny_store, tmp_path, evidence_key, asked):
    """MasakhaNER's Twi is 'tw'; requests are routed by the canonical code ('ak', Akan). Evidence
    written under either name applies to both; before, 'tw' evidence was never found."""
    store = routed_store(tiny_store, tmp_path)
    m = json.loads((store / "manifest.json").read_text())
    m["routing"]["evidence"][evidence_key] = {"ner": {"measured_on": "tw", "metric": "F1",
                                                      "scores": {"task_only": 60.0, "english": 30.0}}}
    (store / "manifest.json").write_text(json.dumps(m))
    r = make_engine(store=store).route("ner", asked, "x")
    assert r.name == "task_only" and "measured routes on tw's dev data" in r.reason, r.reason  # not the default


def test_a_language_with_evidence_and_no_adapter_is_still_recognised(make_engine, tiny_store, tmp_path):
    """A store ships a language's detector profile when its evidence routes it (to task_only, say)
    though its adapter is left out. Before, the detector kept only the served adapters' profiles, so
    Pidgin was detected as English and routed by English's evidence."""
    from madx.langid import build_profile, save_profile

    from ..test_langid import ENGLISH, PIDGIN

    store = routed_store(tiny_store, tmp_path)
    save_profile(store, "en", build_profile(ENGLISH * 20))
    save_profile(store, "pcm", build_profile(PIDGIN * 20))
    save_profile(store, "yo", build_profile(["Ọmọ náà ń sunkún nítorí ìyá rẹ̀ kò tíì padà dé."] * 20))  # no evidence
    m = json.loads((store / "manifest.json").read_text())
    m["routing"]["evidence"]["pcm"] = {"ner": {"measured_on": "pcm", "metric": "F1",
                                               "scores": {"task_only": 76.0, "english": 73.0}}}
    (store / "manifest.json").write_text(json.dumps(m))
    eng = make_engine(store=store)
    assert "pcm" not in eng.languages() and set(eng.detector.profiles.profiles) == {"en", "sw", "de", "pcm"}
    r = eng.route("ner", None, "Dem don carry the matter go court wey dey Lagos, na so the oga talk.")
    assert (r.language, r.source, r.name) == ("pcm", "detected", "task_only"), (r.language, r.reason)
    assert "pcm's dev data" in r.reason or "its own dev data" in r.reason


def test_two_evidence_entries_for_one_language_are_refused(make_engine, tiny_store, tmp_path):
    store = routed_store(tiny_store, tmp_path)
    m = json.loads((store / "manifest.json").read_text())
    m["routing"]["evidence"]["swa"] = m["routing"]["evidence"]["sw"]
    (store / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="two entries for language 'sw'"):
        make_engine(store=store)


def test_an_ensemble_is_the_mean_of_its_stacks_in_one_batch(routed_engine):
    eng = routed_engine
    text = "Rais wa Kenya alizungumza na waandishi wa habari mjini Nairobi."
    ens = eng.route("ner", "sw", text)
    assert ens.name == "ensemble:sw+de"
    ids = eng.tok(text)["input_ids"]
    from serving.engine import Route

    single = [Route(st, "sw", "request", None, None) for st in ens.all_stacks]

    async def go():
        return await asyncio.gather(eng._forward([ids], [ens]), *(eng._forward([ids], [r]) for r in single))
    got, *parts = run(go())
    want = np.mean([p[0] for p in parts], axis=0)
    assert np.abs(got[0] - want).max() < 1e-5
    assert np.abs(parts[0][0] - parts[1][0]).max() > 1e-3  # the two stacks do differ


def store_with_alone(tiny_store, tmp_path, name="ner-alone", task="ner", trained_on=None, routing=True):
    """The routed tiny store plus a task adapter recorded as trained on ``trained_on`` (None: alone)."""
    from madx.artifacts import load_store, save_to_store
    from madx.backbone import load_backbone
    from madx.config import AdapterConfig
    from madx.model import MadxModel

    from ..helpers import NER_LABELS, randomize_
    from .tiny_store import BACKBONE

    store = routed_store(tiny_store, tmp_path) if routing else tmp_path / "store"
    if not routing:
        shutil.copytree(tiny_store, store)
    bb = load_backbone(BACKBONE)
    model = MadxModel(bb.model, bb.name)
    load_store(model, store, [])
    cfg = AdapterConfig.task(name, "ner", NER_LABELS) if task == "ner" else AdapterConfig.task(name, "qa")
    randomize_(model.add_adapter(cfg), 7, std=0.3)
    save_to_store(model, name, store, extra={"metrics": {"trained_on_language_adapter": trained_on}})
    return store


@pytest.mark.parametrize("routing, language, overrides, want", [
    # evidence or an override picks task_only: it runs the adapter trained alone, never 'ner' bare
    (True, "sw", {"sw:ner": "task_only"}, (None, "ner-alone")),
    (True, "sw", {"sw:ner": "madx"}, ("sw", "ner")),  # the stacked routes keep the stacked task adapter
    (True, "sw", {"sw:ner": "ensemble:sw+de"}, ("sw", "ner")),
    # a store without evidence, a language without an adapter: the older rules' task_only, alone
    (False, "fr", {}, (None, "ner-alone")),
    (False, "sw", {}, ("sw", "ner")),
])
def test_the_task_only_route_runs_the_task_adapter_trained_alone(make_engine, tiny_store, tmp_path, routing, language,
                                                                 overrides, want):
    eng = make_engine(store=store_with_alone(tiny_store, tmp_path, routing=routing), routing={"overrides": overrides})
    assert eng.describe()["tasks_alone"] == {"ner": "ner-alone"}
    r = eng.route("ner", language, "x")
    assert (r.stack.language, r.stack.task) == want
    res = run(eng.ner(["Rais wa Kenya alizungumza na waandishi wa habari."], language))["results"][0]
    assert (res["stack"]["language"], res["stack"]["task"]) == want


@pytest.mark.parametrize("name, task, trained_on, message", [
    ("ner-alone", "qa", None, "tasks_alone.ner = 'ner-alone' is a 'qa' adapter"),
    ("ner-alone", "ner", "en", "trained on top of a language adapter"),
])
def test_a_wrong_alone_adapter_is_refused_at_start(make_engine, tiny_store, tmp_path, name, task, trained_on, message):
    with pytest.raises(ArtifactError, match=message):
        make_engine(store=store_with_alone(tiny_store, tmp_path, name, task, trained_on))


def test_overrides_win_over_evidence(make_engine, tiny_store, tmp_path):
    eng = make_engine(store=routed_store(tiny_store, tmp_path), routing={"overrides": {"sw:ner": "madx", "de": "related:sw"}})
    assert eng.route("ner", "sw", "x").name == "madx" and "override" in eng.route("ner", "sw", "x").reason
    assert eng.route("ner", "de", "x").stack == AdapterStack("sw", "ner")


# (backbone_dtype, adapter_kernel, max |score difference| against fp32 + runs). fp32 with the gathered
# kernel is the same arithmetic up to summation order; bf16 / int8 backbones are looser.
PRECISIONS = [("fp32", "gathered", 1e-4), ("bf16", "runs", 0.05), ("bf16", "gathered", 0.05),
              ("int8", "runs", 0.05)]


@pytest.mark.parametrize("dtype,kernel,tol", PRECISIONS)
def test_backbone_dtype_and_adapter_kernel_serve_the_same_answers(make_engine, dtype, kernel, tol):
    ref = make_engine(backbone_dtype="fp32", batching={"adapter_kernel": "runs"})
    other = make_engine(backbone_dtype=dtype, batching={"adapter_kernel": kernel})
    assert other.describe()["backbone_dtype"] == dtype and other.model.adapter_kernel == kernel

    async def burst(eng):
        pairs = [("en", "en"), ("sw", "sw"), ("de", "de"), ("sw", None)] * 3  # (text, requested language)
        return await asyncio.gather(*(eng.ner([TEXT[src][i % 3]], lang, True) for i, (src, lang) in enumerate(pairs)))

    for a, b in zip(run(burst(ref)), run(burst(other)), strict=True):
        ta, tb = a["results"][0]["tokens"], b["results"][0]["tokens"]
        assert [t["text"] for t in ta] == [t["text"] for t in tb]
        assert max(abs(x["score"] - y["score"]) for x, y in zip(ta, tb, strict=True)) <= tol


def test_fp16_backbone_on_cpu_is_a_clear_startup_error(make_engine):
    with pytest.raises(RuntimeError, match="backbone_dtype: backbone_dtype 'fp16' needs a CUDA device"):
        make_engine(backbone_dtype="fp16", device="cpu")


@pytest.mark.parametrize("dtype,adapters,want", [("bf16", "backbone", "torch.bfloat16"), ("bf16", "fp32", "torch.float32"),
                                                 ("fp32", "backbone", "torch.float32"), ("int8", "backbone", "torch.float32")])
def test_adapter_dtype_follows_the_resolved_backbone(make_engine, dtype, adapters, want):
    eng = make_engine(backbone_dtype=dtype, adapter_dtype=adapters)
    run(eng.ner([TEXT["sw"][0]], "sw", False))  # the adapters are resident once used
    assert {str(p.dtype) for p in eng.model.adapters.parameters()} == {want}


def test_the_engine_refuses_a_precision_this_cpu_runs_slower_than_fp32(make_engine, monkeypatch):
    """Was: MADX_BACKBONE_DTYPE=int8 served on an AVX2-only CPU at 1/20 of fp32's speed."""
    import madx.precision as p

    monkeypatch.setattr(p, "cpu_flags", lambda: {"sse2", "avx2"})
    with pytest.raises(RuntimeError, match="backbone_dtype 'int8' would be slower than fp32 on this CPU"):
        make_engine(backbone_dtype="int8", device="cpu", allow_slow_precision=False)
    assert make_engine(backbone_dtype="int8", device="cpu").describe()["backbone_dtype"] == "int8"  # allowed
