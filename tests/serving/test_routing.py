"""Routing by evidence: a table of measured scores goes in, the chosen route comes out."""

from __future__ import annotations

import pytest

from madx.config import AdapterStack
from serving.routing import RouteError, choose, keyed_by_code, stacks_for

SERVED = {"en", "sw", "rw", "yo"}
ROUTING = {
    "evidence": {
        "sw": {"ner": {"measured_on": "sw", "metric": "F1",
                       "scores": {"madx": 61.2, "task_only": 63.0, "english": 58.1, "related:rw": 55.0}},
               "qa": {"measured_on": "sw", "metric": "F1", "scores": {"madx": 70.0, "task_only": 66.0}}},
        "yo": {"ner": {"measured_on": "yo", "metric": "F1",
                       "scores": {"madx": 40.0, "task_only": 35.0, "ensemble:yo+sw": 44.5}}},
        "rw": {"ner": {"measured_on": "sw", "metric": "F1",  # no rw dev data: the related language's
                       "scores": {"madx": 50.0, "task_only": 50.0, "related:xx": 90.0}}},
    },
    "default": {"ner": {"route": "english", "over": ["yo", "rw", "ig"], "scores": {"english": 30.0, "task_only": 29.0}},
                "qa": {"route": "madx", "over": ["yo"], "scores": {"madx": 20.0, "task_only": 19.0}}},
}


@pytest.mark.parametrize("task, language, overrides, want_route, want_stacks, reason", [
    # the best measured route wins, even when it is not MAD-X
    ("ner", "sw", {}, "task_only", [(None, "ner")], "best of 4 measured routes on its own dev data (F1 63.0)"),
    ("qa", "sw", {}, "madx", [("sw", "qa")], "(F1 70.0, task_only 66.0)"),
    # an ensemble runs each listed adapter; 'none' is the stacked task adapter without a language adapter
    ("ner", "yo", {}, "ensemble:yo+sw", [("yo", "ner"), ("sw", "ner")], "F1 44.5"),
    ("ner", "sw", {"sw": "ensemble:sw+none"}, "ensemble:sw+none", [("sw", "ner"), (None, "ner")], "override"),
    ("ner", "de", {"de": "ensemble:none+rw+sw"}, "ensemble:none+rw+sw", [(None, "ner"), ("rw", "ner"), ("sw", "ner")],
     "override"),
    # a tie goes to the simpler route; a route needing an unserved adapter is never chosen
    ("ner", "rw", {}, "task_only", [(None, "ner")], "on sw's dev data"),
    # no evidence for the language, or no language: the best route on average over unseen languages
    ("ner", "ig", {}, "english", [("en", "ner")], "'ig' has no evidence: best route on average over 3 unseen"),
    ("ner", None, {}, "english", [("en", "ner")], "an undetermined language has no evidence"),
    # a default that needs the language's own adapter falls back to the best usable default route
    ("qa", "de", {}, "task_only", [(None, "qa")], "'de' has no evidence"),
    ("qa", "yo", {}, "madx", [("yo", "qa")], "'yo' has no evidence"),
    # explicit overrides win: per language and task, per language, per task
    ("ner", "sw", {"sw:ner": "madx"}, "madx", [("sw", "ner")], "override sw:ner=madx"),
    ("ner", "sw", {"sw": "related:rw"}, "related:rw", [("rw", "ner")], "override sw=related:rw"),
    ("ner", "ig", {"*:ner": "task_only"}, "task_only", [(None, "ner")], "override *:ner=task_only"),
])
def test_choose(task, language, overrides, want_route, want_stacks, reason):
    c = choose(task, language, SERVED, ROUTING, "en", overrides)
    assert c.route == want_route
    assert c.stacks == tuple(AdapterStack(lang, t) for lang, t in want_stacks)
    assert reason in c.reason, c.reason


def test_no_evidence_and_no_default_leaves_the_older_rules():
    assert choose("ner", "sw", SERVED, {}) is None
    assert choose("ner", "sw", SERVED, {"evidence": {"sw": {"qa": {"scores": {"madx": 1}}}}}) is None


@pytest.mark.parametrize("route, message", [
    ("ensemble:sw", "at least two"), ("related:de", "not served"), ("madx", "not served"), ("magic", "unknown"),
    ("ensemble:sw+sw", "two different"), ("ensemble:none+none", "two different"), ("ensemble:none", "at least two"),
    ("ensemble:de+none", "not served"), ("related:none", "not served"),
])
def test_bad_routes_say_why(route, message):
    with pytest.raises(RouteError, match=message):
        stacks_for(route, "de", "ner", "en", SERVED)


def test_an_override_to_an_unserved_adapter_is_an_error_not_a_silent_change():
    with pytest.raises(RouteError, match="not served"):
        choose("ner", "sw", SERVED, ROUTING, "en", {"sw": "related:de"})


@pytest.mark.parametrize("task, language, overrides, want_stacks", [
    # task_only runs the adapter trained alone; every stack with a language adapter runs the stacked one
    ("ner", "sw", {}, [(None, "ner-alone")]),
    ("ner", "yo", {}, [("yo", "ner-madx"), ("sw", "ner-madx")]),
    ("ner", "ig", {}, [("en", "ner-madx")]),
    ("ner", "sw", {"sw": "madx"}, [("sw", "ner-madx")]),
    ("ner", "ig", {"*:ner": "task_only"}, [(None, "ner-alone")]),
    # an ensemble's 'none' member runs the stacked adapter (one task adapter: one label set to average)
    ("ner", "sw", {"sw": "ensemble:sw+none"}, [("sw", "ner-madx"), (None, "ner-madx")]),
])
def test_stacks_name_the_stacked_and_the_alone_task_adapters(task, language, overrides, want_stacks):
    c = choose(task, language, SERVED, ROUTING, "en", overrides, adapter="ner-madx", alone="ner-alone")
    assert c.stacks == tuple(AdapterStack(lang, t) for lang, t in want_stacks)
    # without a separate adapter trained alone, task_only runs the stacked adapter by itself
    assert stacks_for("task_only", "sw", "ner-madx", "en", SERVED) == (AdapterStack(None, "ner-madx"),)


def test_a_default_measured_on_seen_languages_says_so():
    routing = {"default": {"qa": {"route": "task_only", "over": ["sw"], "scores": {"task_only": 60.0},
                                  "languages": "measured"}}}
    c = choose("qa", "yo", SERVED, routing)
    assert (c.route, c.stacks) == ("task_only", (AdapterStack(None, "qa"),))
    assert "best route on average over 1 measured languages" in c.reason, c.reason


# evidence with a paired bootstrap against task_only over the dev examples (madx-train evidence)
BOOT = {"resamples": 2000, "interval": 0.9, "examples": 100, "unit": "sentences"}
NOISY = {"evidence": {
    # madx +1.9 on 100 sentences, its interval spans 0: noise, task_only is served
    "my": {"ner": {"measured_on": "my", "metric": "F1", "scores": {"madx": 43.5, "task_only": 41.6, "english": 42.4},
                   "vs_task_only": {"madx": {"delta": 1.9, "low": -1.2, "high": 5.0},
                                    "english": {"delta": 0.8, "low": -2.0, "high": 3.6}},
                   "bootstrap": BOOT}},
    # the top route is noise, the runner-up a clear win: the clear win is served
    "yo": {"ner": {"measured_on": "yo", "metric": "F1", "scores": {"madx": 47.0, "task_only": 40.0, "english": 45.0},
                   "vs_task_only": {"madx": {"delta": 7.0, "low": -0.5, "high": 14.0},
                                    "english": {"delta": 5.0, "low": 1.5, "high": 8.5}},
                   "bootstrap": BOOT}},
    # a clear win is served, with its interval in the reason
    "sw": {"ner": {"measured_on": "sw", "metric": "F1", "scores": {"madx": 70.0, "task_only": 63.0},
                   "vs_task_only": {"madx": {"delta": 7.0, "low": 3.1, "high": 10.9}}, "bootstrap": BOOT}},
    # a route the bootstrap did not compare is not served over task_only
    "rw": {"ner": {"measured_on": "rw", "metric": "F1", "scores": {"madx": 70.0, "task_only": 63.0},
                   "vs_task_only": {}, "bootstrap": BOOT}},
    # no task_only score: nothing to compare against, the best route as before
    "en": {"ner": {"measured_on": "en", "metric": "F1", "scores": {"madx": 80.0, "english": 79.0},
                   "vs_task_only": {}, "bootstrap": BOOT}},
}}


@pytest.mark.parametrize("language, overrides, want_route, reasons", [
    ("my", {}, "task_only", ["(F1 41.6)", "madx scored 43.5 but did not beat task_only beyond noise "
                             "(+1.9, 90% interval -1.2..+5.0 over 100 sentences)"]),
    ("yo", {}, "english", ["(F1 45.0, task_only 40.0)", "beats task_only beyond noise (+5.0, 90% interval +1.5..+8.5",
                           "madx scored 47.0 but did not beat"]),
    ("sw", {}, "madx", ["beats task_only beyond noise (+7.0, 90% interval +3.1..+10.9 over 100 sentences)"]),
    ("rw", {}, "task_only", ["(F1 63.0)"]),
    ("en", {}, "madx", ["(F1 80.0)"]),
    # an override still wins over the noise rule
    ("my", {"my": "madx"}, "madx", ["override my=madx"]),
])
def test_a_route_must_beat_task_only_beyond_noise(language, overrides, want_route, reasons):
    c = choose("ner", language, SERVED | {"my"}, NOISY, "en", overrides)
    assert c.route == want_route, c.reason
    for r in reasons:
        assert r in c.reason, c.reason


@pytest.mark.parametrize("evidence, want_keys", [
    ({"tw": {}, "sw": {}}, {"ak", "sw"}),  # an alias goes under the code requests are routed with
    ({"pt-br": {}}, {"pt-br"}),  # a served adapter's own name stays as it is
    ({"not a code!": {}}, {"not a code!"}),  # a name code_of refuses is kept
])
def test_evidence_is_keyed_by_the_code_requests_are_routed_with(evidence, want_keys):
    from madx.language_codes import canonical

    def code_of(tag):
        return tag if tag == "pt-br" else canonical(tag)

    routing = {"evidence": evidence, "default": {"ner": {"route": "task_only"}}}
    keyed = keyed_by_code(routing, code_of)
    assert set(keyed["evidence"]) == want_keys and keyed["default"] == routing["default"]
    with pytest.raises(RouteError, match="two entries for language 'sw'"):
        keyed_by_code({"evidence": {"sw": {}, "swa": {}}}, code_of)


# a store with two stacked NER adapters: the multi-source one (ner-madx) and one trained on English alone
# (ner-en); a route names the second after '@'
NAMED = {"evidence": {
    "en": {"ner": {"measured_on": "en", "metric": "F1",
                   "scores": {"task_only": 70.0, "ensemble:en+none": 72.0, "madx@ner-en": 75.5},
                   "vs_task_only": {"ensemble:en+none": {"delta": 2.0, "low": 0.5, "high": 3.5},
                                    "madx@ner-en": {"delta": 5.5, "low": 3.0, "high": 8.0}}, "bootstrap": BOOT}},
    # the best route names a task adapter this server does not load: the next best is served
    "sw": {"ner": {"measured_on": "sw", "metric": "F1", "scores": {"task_only": 60.0, "madx@ner-gone": 70.0,
                                                                   "ensemble:sw+none": 64.0},
                   "vs_task_only": {"madx@ner-gone": {"delta": 10.0, "low": 6.0, "high": 14.0},
                                    "ensemble:sw+none": {"delta": 4.0, "low": 1.0, "high": 7.0}}, "bootstrap": BOOT}},
    # a tie between the same route over two task adapters goes to the simpler route, task_only
    "yo": {"ner": {"measured_on": "yo", "metric": "F1", "scores": {"task_only": 50.0, "madx@ner-en": 50.0}}},
}}
TASK_ADAPTERS = {"ner-madx", "ner-en"}


@pytest.mark.parametrize("language, overrides, want_route, want_stacks", [
    ("en", {}, "madx@ner-en", [("en", "ner-en")]),
    ("sw", {}, "ensemble:sw+none", [("sw", "ner-madx"), (None, "ner-madx")]),
    ("yo", {}, "task_only", [(None, "ner-alone")]),
    # every route form takes '@': each stack runs the named task adapter, task_only included
    ("sw", {"sw": "ensemble:sw+none@ner-en"}, "ensemble:sw+none@ner-en", [("sw", "ner-en"), (None, "ner-en")]),
    ("sw", {"sw": "english@ner-en"}, "english@ner-en", [("en", "ner-en")]),
    ("sw", {"sw": "related:yo@ner-en"}, "related:yo@ner-en", [("yo", "ner-en")]),
    ("sw", {"sw": "task_only@ner-en"}, "task_only@ner-en", [(None, "ner-en")]),
])
def test_a_route_may_name_its_task_adapter(language, overrides, want_route, want_stacks):
    c = choose("ner", language, SERVED, NAMED, "en", overrides, adapter="ner-madx", alone="ner-alone",
               task_adapters=TASK_ADAPTERS)
    assert c.route == want_route, c.reason
    assert c.stacks == tuple(AdapterStack(lang, t) for lang, t in want_stacks)


@pytest.mark.parametrize("route, message", [
    ("madx@ner-gone", "needs task adapter 'ner-gone', which is not served; served task adapters: ['ner-en', 'ner-madx']"),
    ("madx@", "name the task adapter after '@'"),
    ("magic@ner-en", "unknown"),
    ("ensemble:sw+de@ner-en", "needs language adapters ['de']"),
])
def test_bad_named_routes_say_why(route, message):
    with pytest.raises(RouteError, match=message.replace("[", r"\[").replace("]", r"\]")):
        stacks_for(route, "sw", "ner-madx", "en", SERVED, "ner-alone", TASK_ADAPTERS)
