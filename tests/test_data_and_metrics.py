"""Readers (errors name path:line) and metrics (entity F1 as seqeval, SQuAD v1.1 EM/F1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from madx.data import DataError, normalise_sentence, read_conll, read_squad, read_text
from madx.metrics import entities, ner_f1, normalize_answer, squad_scores

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
