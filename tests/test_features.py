"""NER sub-word labels and QA windows on the exact XLM-R tokenizer: nothing dropped, offsets exact."""

from __future__ import annotations

import pytest

from madx.backbone import xlmr_tokenizer
from madx.features import IGNORE, ner_features, qa_windows


@pytest.fixture(scope="module")
def tok():
    return xlmr_tokenizer()


@pytest.mark.parametrize(
    "words,max_len",
    [
        (["Rais", "Samia", "alizuru", "Nairobi", "."], 64),
        (["Olú-ilé", "Àjọ", "Àgbáyé", "wà", "ní", "New", "York"], 64),
        (["東京", "に", "住んで", "いる"], 64),
        (["word"] * 40 + ["Kilimanjaro"] * 10, 16),  # forces several windows
    ],
)
def test_ner_labels_on_first_subword_and_no_word_lost(tok, words, max_len):
    labels = [list(range(len(words)))]  # label = word index, to check alignment
    feats = ner_features(tok, [words], labels, max_len)
    seen = []
    for f in feats:
        assert len(f.input_ids) <= max_len and f.input_ids[0] == tok.cls_token_id and f.input_ids[-1] == tok.sep_token_id
        for wid, lab in zip(f.word_ids, f.labels, strict=True):
            if lab != IGNORE:
                assert lab == wid
                seen.append(wid)
    assert seen == list(range(len(words)))  # every word labelled once, in order


def test_word_longer_than_window_is_an_error_not_a_cut(tok):
    with pytest.raises(ValueError, match="has more than 2 sub-words"):
        ner_features(tok, [["Donaudampfschifffahrtsgesellschaft"]], None, max_len=4)


@pytest.mark.parametrize("max_len,stride", [(384, 128), (48, 16)])
def test_qa_windows_cover_the_context_and_find_the_answer(tok, max_len, stride):
    context = " ".join(f"Sentensi ya {i} inaeleza mji wa Nairobi na Mombasa." for i in range(30)) + " Jibu ni 1963 kamili."
    start = context.index("1963")
    wins = qa_windows(tok, "Ni mwaka gani?", context, max_len=max_len, stride=stride, answer=("1963", start))
    assert all(len(w.input_ids) <= max_len for w in wins)
    covered = set()
    for w in wins:
        for o in w.offsets:
            if o is not None:
                covered.update(range(*o))
    assert all(i in covered for i, ch in enumerate(context) if not ch.isspace())  # no text dropped
    hits = [w for w in wins if w.start_position > 0]
    assert hits, "answer found in some window"
    for w in hits:
        a, b = w.offsets[w.start_position][0], w.offsets[w.end_position][1]
        assert context[a:b].strip() == "1963"
    if max_len == 48:
        assert len(wins) > 1


def test_empty_sentence_is_a_clear_error(tok):
    with pytest.raises(ValueError, match="sentence 1 has no tokens"):
        ner_features(tok, [["ok"], []], None, max_len=16)
