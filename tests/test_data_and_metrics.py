"""Readers (errors name path:line) and metrics (entity F1 as seqeval, SQuAD v1.1 EM/F1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from madx.train.data import DataError, normalise_sentence, read_conll, read_squad, read_text
from madx.train.metrics import entities, f1_of_counts, mean_of_scores, ner_f1, normalize_answer, paired_bootstrap, squad_scores

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize(
    "text,tokens,tags",
    [
        ("EU\tB-ORG\nrejects\tO\n\nPeter\tB-PER\n", [("EU", "rejects"), ("Peter",)], [("B-ORG", "O"), ("B-PER",)]),
        ("-DOCSTART- -X- O O\n\nCRICKET NNP B-NP O\nLEICESTER NNP B-NP B-ORG\n", [("CRICKET", "LEICESTER")],
         [("O", "B-ORG")]),
        ("sw:Nairobi\tB-LOC\nsw:ni\tO\n", [("Nairobi", "ni")], [("B-LOC", "O")]),  # WikiANN lang: prefix
        ("Maafisa O\n O\nwa O\n", [("Maafisa", "wa")], [("O", "O")]),  # empty token line (MasakhaNER2 xho)
    ],
)
def test_read_conll(tmp_path, text, tokens, tags):
    p = tmp_path / "x.txt"
    p.write_text(text, encoding="utf-8")
    f = read_conll(p)
    assert [s.tokens for s in f.sentences] == tokens
    assert [s.tags for s in f.sentences] == tags


@pytest.mark.parametrize(
    "text,message",
    [
        ("EU\tB-ORG\nrejects\tX-MISC\n", ":2: tag 'X-MISC' is not IOB2"),
        ("EU B-ORG\nlonely\n", ":2: expected a token and a tag column, got 'lonely'"),
        ("\n\n", ":1: no sentences found"),
    ],
)
def test_read_conll_errors_name_the_line(tmp_path, text, message):
    p = tmp_path / "bad.txt"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_conll(p)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_conll(tmp_path / "nope.txt")


def squad_doc(answer_start=0, qid="q1"):
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "Nairobi is big.", "qas": [
        {"id": qid, "question": "Which city?", "answers": [{"text": "Nairobi", "answer_start": answer_start}]},
        {"id": qid, "question": "Again?", "answers": [{"text": "big", "answer_start": 11}]}]}]}]}


def test_read_squad_rekeys_duplicate_ids(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps(squad_doc()))
    ex = read_squad(p)
    assert [e.id for e in ex] == ["q1", "q1#2"]
    assert ex[0].answers == (("Nairobi", 0),)


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"data": [\n  {"paragraphs": ]}', ":2: invalid JSON"),
        (json.dumps(squad_doc(answer_start=3)), "answer 'Nairobi' of question 'q1' is not at context\\[3:\\]"),
        ('{"version": 1}', ":1: expected a SQuAD object with a 'data' list"),
    ],
)
def test_read_squad_errors(tmp_path, content, message):
    p = tmp_path / "s.json"
    p.write_text(content)
    with pytest.raises(DataError, match=message):
        read_squad(p)


def test_read_text_excludes_test_sentences(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("Habari ya leo.\n\nTest sentence, here!\nNyingine\n", encoding="utf-8")
    assert read_text(p, exclude={normalise_sentence("test SENTENCE here")}) == ["Habari ya leo.", "Nyingine"]


@pytest.mark.parametrize(
    "tags,ents",
    [
        (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 2), ("LOC", 3, 4)}),
        (["I-PER", "I-PER", "O"], {("PER", 0, 2)}),  # I- after O starts an entity (conlleval)
        (["B-PER", "I-LOC", "I-LOC"], {("PER", 0, 1), ("LOC", 1, 3)}),
        (["B-ORG", "B-ORG"], {("ORG", 0, 1), ("ORG", 1, 2)}),
        (["O", "O"], set()),
    ],
)
def test_entities(tags, ents):
    assert entities(tags) == ents


def test_ner_f1_counts():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    r = ner_f1(gold, pred)
    # 3 gold, 3 predicted, 2 correct
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)
    assert r["per_type_f1"] == {"LOC": 0.0, "ORG": 1.0, "PER": 1.0}
    # per sentence: (correct, gold, predicted); summed, they give the same micro F1
    assert r["per_sentence"] == [(1, 2, 1), (1, 1, 2)]
    assert f1_of_counts(np.array(r["per_sentence"]).sum(0)) == pytest.approx(100 * 2 / 3)


@pytest.mark.parametrize(
    "a,b", [("The Nairobi!", "nairobi"), ("an  apple", "apple"), ("U.S.A.", "usa")],
)
def test_normalize_answer(a, b):
    assert normalize_answer(a) == b


def test_squad_scores():
    r = squad_scores({"1": "the Nairobi", "2": "big city", "3": "x"},
                     {"1": ["Nairobi"], "2": ["a big city indeed", "town"], "3": ["y"], "4": ["z"]})
    assert r["exact_match"] == pytest.approx(25.0)
    f1_q2 = 2 * (2 / 2) * (2 / 3) / (1 + 2 / 3)
    assert r["f1"] == pytest.approx(100 * (1 + f1_q2) / 4)
    assert r["missing"] == 1
    assert r["per_question"] == [(1.0, 1), (pytest.approx(f1_q2), 1), (0.0, 1), (0.0, 1)]
    assert mean_of_scores(np.array(r["per_question"]).sum(0)) == pytest.approx(r["f1"])


def _sentences(n_right: int, n: int) -> list[tuple[int, int, int]]:
    """n one-entity sentences, the first n_right predicted right, the rest predicted wrong."""
    return [(1, 1, 1)] * n_right + [(0, 1, 1)] * (n - n_right)


@pytest.mark.parametrize("a, b, clear_win", [
    # 80 vs 50 of 100 sentences right, the rest of the draw shared: a clear win, its interval above 0
    (_sentences(80, 100), _sentences(50, 100), True),
    # 52 vs 50 of 100: the same +2 F1 a 100-sentence dev set often shows by chance: the interval spans 0
    ([(1, 1, 1)] * 50 + [(1, 1, 1), (1, 1, 1)] + [(0, 1, 1)] * 48,
     [(1, 1, 1)] * 50 + [(0, 1, 1), (0, 1, 1)] + [(0, 1, 1)] * 48, False),
    # identical systems: delta 0, never better
    (_sentences(60, 100), _sentences(60, 100), False),
])
def test_paired_bootstrap_tells_a_win_from_noise(a, b, clear_win):
    r = paired_bootstrap([(a, b)], f1_of_counts, resamples=1000)
    want = 100 * (sum(x[0] for x in a) - sum(x[0] for x in b)) / len(a)
    assert r["delta"] == pytest.approx(want)
    assert r["low"] <= r["delta"] <= r["high"]
    assert (r["low"] > 0) == clear_win, r
    assert r["examples"] == 100 and r["interval"] == 0.95


def test_paired_bootstrap_pairs_the_draws():
    """Both systems get the same resample: B = A plus one right sentence in 200 is a small but
    certain win, which unpaired resampling (the two scores drawn apart) could not see."""
    a = _sentences(101, 200)
    b = _sentences(100, 200)
    r = paired_bootstrap([(a, b)], f1_of_counts, resamples=500)
    assert r["low"] >= 0 and r["p_not_better"] < 0.5, r


def test_paired_bootstrap_stratifies_and_averages_groups():
    """Two data sets: the statistic is the mean of the per-set differences, each set resampled apart."""
    g1 = (_sentences(80, 100), _sentences(50, 100))  # +30 F1
    g2 = (_sentences(5, 10), _sentences(5, 10))  # +0 F1, on ten sentences: weighs as much as g1
    r = paired_bootstrap([g1, g2], f1_of_counts, resamples=200)
    assert r["delta"] == pytest.approx(15.0) and r["examples"] == 110
    assert 0 < r["low"] < 15 < r["high"] < 30


@pytest.mark.parametrize("groups, message", [
    ([], "at least one group"),
    ([([(1, 1, 1)], [(1, 1, 1), (0, 1, 1)])], "same non-empty"),
    ([([], [])], "same non-empty"),
])
def test_paired_bootstrap_refuses_unpaired_data(groups, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(groups, f1_of_counts)


@pytest.mark.data
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")
def test_real_files_parse_with_published_counts():
    """Counts from shared/data/PROVENANCE.md."""
    assert len(read_conll(SHARED / "ner/wikiann_xtreme_panx/test-sw.tsv").sentences) == 1000
    assert len(read_conll(SHARED / "ner/conll2003_en_original_4col/eng.testa").sentences) == 3250
    xho = read_conll(SHARED / "ner/masakhaner2/xho/train.txt")
    assert len(xho.sentences) == 5718 and xho.skipped_empty_tokens == 2
    assert len(read_squad(SHARED / "qa/xquad/xquad.de.json")) == 1190
    tydi = read_squad(SHARED / "qa/tydiqa_goldp_xtreme/train/tydiqa.goldp.en.train.json")
    assert len(tydi) == 3696 and len({e.id for e in tydi}) == 3696
