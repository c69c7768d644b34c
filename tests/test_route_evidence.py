"""Route evidence from per-example dev scores (madx/train/route_evidence.py): the bootstrap against
task_only that routing needs, and the default for languages without evidence. A table of rows goes
in, scores, intervals and the default route come out."""

from __future__ import annotations

import pytest

from madx.train.route_evidence import language_evidence, measured_default
from serving.routing import choose


def ner(n_right: int, n: int = 100) -> list[tuple[int, int, int]]:
    """n one-entity sentences, the first n_right tagged right."""
    return [(1, 1, 1)] * n_right + [(0, 1, 1)] * (n - n_right)


def qa(n_right: int, n: int = 100) -> list[tuple[float, int]]:
    return [(1.0, 1)] * n_right + [(0.0, 1)] * (n - n_right)


def test_language_evidence_scores_and_compares_every_route_with_task_only():
    ev = language_evidence("ner", "yo", {"madx": ner(52), "task_only": ner(50), "english": ner(75)}, resamples=500)
    assert ev["scores"] == {"madx": 52.0, "task_only": 50.0, "english": 75.0}
    assert set(ev["vs_task_only"]) == {"madx", "english"}
    assert ev["vs_task_only"]["madx"]["delta"] == 2.0 and ev["vs_task_only"]["madx"]["low"] <= 0  # noise
    assert ev["vs_task_only"]["english"]["low"] > 0  # a clear win
    assert ev["bootstrap"] == {"resamples": 500, "interval": 0.95, "examples": 100, "unit": "sentences"}
    # what the server makes of it: the clear win, not the noisy one
    c = choose("ner", "yo", {"en", "yo"}, {"evidence": {"yo": {"ner": ev}}})
    assert c.route == "english", c.reason


def test_language_evidence_without_task_only_has_nothing_to_compare():
    ev = language_evidence("qa", "sw", {"madx": qa(60), "english": qa(55)})
    assert ev["scores"] == {"madx": 60.0, "english": 55.0} and ev["vs_task_only"] == {} and "bootstrap" not in ev


@pytest.mark.parametrize("task, rows, want", [
    # english better on average over the unseen languages, clearly: it is the default
    ("ner", {"yo": {"task_only": ner(40), "english": ner(60)}, "qu": {"task_only": ner(40), "english": ner(58)},
             "sw": {"task_only": ner(90), "english": ner(10)}},  # sw: seen in pre-training, not in the pool
     {"route": "english", "over": ["qu", "yo"], "scores": {"task_only": 40.0, "english": 59.0}, "languages": "unseen"}),
    # english better on average but within noise: task_only, the simpler route
    ("ner", {"yo": {"task_only": ner(40), "english": ner(43)}, "qu": {"task_only": ner(40), "english": ner(38)}},
     {"route": "task_only", "scores": {"task_only": 40.0, "english": 40.5}}),
    # no unseen language measured (QA here): over the measured ones, and it says so
    ("qa", {"sw": {"task_only": qa(60), "english": qa(50)}, "ar": {"task_only": qa(40), "english": qa(45)}},
     {"route": "task_only", "over": ["ar", "sw"], "languages": "measured"}),
    # madx is not a candidate for a language without an adapter of its own
    ("ner", {"yo": {"task_only": ner(40), "madx": ner(90)}}, {"route": "task_only", "scores": {"task_only": 40.0}}),
])
def test_measured_default(task, rows, want):
    d = measured_default(task, rows, seen={"sw", "ar"}, resamples=500)
    assert {k: d[k] for k in want} == want, d
    if d["scores"].get("english", 0) > d["scores"]["task_only"]:
        assert "english" in d["vs_task_only"]


@pytest.mark.parametrize("rows", [{}, {"yo": {"madx": ner(50)}}])
def test_no_default_without_a_common_generic_route(rows):
    assert measured_default("ner", rows, seen=set()) is None


def test_a_route_that_wins_on_one_dev_set_and_loses_on_the_other_is_not_served():
    """A language with two dev sets (WikiANN and MasakhaNER): each route's score is the mean over the
    sets, its bootstrap stratified by set, so 100 Wikipedia sentences cannot carry a route that loses on
    300 news sentences (yo's `english`, chosen on WikiANN dev, lost 10 F1 on MasakhaNER test)."""
    rows = {"english": {"wikiann": ner(75, 100), "masakhaner": ner(135, 300)},
            "task_only": {"wikiann": ner(60, 100), "masakhaner": ner(180, 300)}}
    ev = language_evidence("ner", "yo", rows, resamples=500)
    assert ev["scores"] == {"english": 60.0, "task_only": 60.0} and ev["dev_sets"] == ["masakhaner", "wikiann"]
    assert ev["vs_task_only"]["english"]["delta"] == 0.0 and ev["bootstrap"]["examples"] == 400
    assert choose("ner", "yo", {"en", "yo"}, {"evidence": {"yo": {"ner": ev}}}).route == "task_only"
    # the same win measured on the Wikipedia set alone would have been served
    alone = language_evidence("ner", "yo", {r: x["wikiann"] for r, x in rows.items()}, resamples=500)
    assert "dev_sets" not in alone and choose("ner", "yo", {"en", "yo"}, {"evidence": {"yo": {"ner": alone}}}).route == "english"


def test_routes_measured_on_different_dev_sets_are_refused():
    with pytest.raises(ValueError, match=r"route 'madx' was measured on dev sets \['a'\], task_only on \['a', 'b'\]"):
        language_evidence("ner", "yo", {"madx": {"a": ner(50)}, "task_only": {"a": ner(50), "b": ner(50)}})


def test_the_default_weighs_each_language_the_same_whatever_its_number_of_dev_sets():
    # qu: one set, english +20; yo: two sets, english +20 on one and -20 on the other (mean 0)
    rows = {"qu": {"task_only": ner(40), "english": ner(60)},
            "yo": {"task_only": {"w": ner(40), "m": ner(60)}, "english": {"w": ner(60), "m": ner(40)}}}
    d = measured_default("ner", rows, seen=set(), resamples=500)
    assert d["scores"] == {"task_only": 45.0, "english": 55.0}
    assert d["vs_task_only"]["english"]["delta"] == 10.0  # (20 + (20 - 20) / 2) / 2, not (20 + 20 - 20) / 3


@pytest.mark.parametrize("weights, message", [
    ([1.0], "must be 2 non-negative numbers"), ([1.0, -1.0], "must be 2 non-negative"), ([0.0, 0.0], "not all 0")])
def test_bootstrap_weights_are_checked(weights, message):
    from madx.train.metrics import f1_of_counts, paired_bootstrap

    groups = [(ner(60), ner(50)), (ner(40), ner(50))]
    assert paired_bootstrap(groups, f1_of_counts, 100, weights=[3, 1])["delta"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(groups, f1_of_counts, 100, weights=weights)
