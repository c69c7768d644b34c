"""NER sub-word labels and QA windows on the exact XLM-R tokenizer: nothing dropped, offsets exact."""

from __future__ import annotations

import pytest

from madx.backbone import xlmr_tokenizer
from madx.features import IGNORE, ner_features, project_tags, qa_windows
from madx.words import join_words, split_words


@pytest.fixture(scope="module")
def tok():
    return xlmr_tokenizer()


def feats_of(tok, words, labels=None, max_len=64):
    text, spans = join_words(words)
    return text, ner_features(tok, [text], [spans], labels, max_len)


@pytest.mark.parametrize(
    "words,max_len",
    [
        (["Rais", "Samia", "alizuru", "Nairobi", "."], 64),
        (["Olú-ilé", "Àjọ", "Àgbáyé", "wà", "ní", "New", "York"], 64),
        (["東京", "に", "住んで", "いる"], 64),
        (["国", "家", "主", "席", "习", "近", "平", "在", "北", "京", "。"], 64),  # WikiANN zh: one word a character
        (["กรุงเทพมหานคร", "เป็น", "เมือง"], 64),
        (["ရန်ကုန်", "မြို့"], 64),
        (["ភ្នំពេញ", "ជា", "រាជធានី"], 64),
        (["y'u", "n'inshuti", "Thiong'o", "Macron", "🇫🇷", ","], 64),
        (["word"] * 40 + ["Kilimanjaro"] * 10, 16),  # forces several windows
    ],
)
def test_ner_label_on_the_first_subword_that_carries_the_word(tok, words, max_len):
    labels = [list(range(len(words)))]  # label = word index, to check alignment
    text, feats = feats_of(tok, words, labels, max_len)
    _, spans = join_words(words)
    seen = []
    for f in feats:
        assert len(f.input_ids) <= max_len and f.input_ids[0] == tok.cls_token_id and f.input_ids[-1] == tok.sep_token_id
        for k, (wid, lab) in enumerate(zip(f.word_ids, f.labels, strict=True)):
            if lab != IGNORE:
                assert lab == wid
                piece = tok.convert_ids_to_tokens(f.input_ids[k])
                assert piece.strip("▁"), f"label on a bare {piece!r} piece"
                a, b = f.spans[k]
                assert spans[wid][0] == a and b <= spans[wid][1] and text[a:b] == piece.lstrip("▁")
                seen.append(wid)
    assert seen == list(range(len(words)))  # every word labelled once, in order


@pytest.mark.parametrize("text", ["国家主席习近平在北京会见了美国总统拜登。", "東京都知事の小池百合子は大阪を訪れた。"])
def test_a_cjk_run_is_not_cut_into_marker_plus_character_pairs(tok, text):
    ws = split_words(text)
    (f,) = ner_features(tok, [text], [[(w.start, w.end) for w in ws]], None, 64)
    pieces = tok.convert_ids_to_tokens(f.input_ids)[1:-1]
    assert pieces.count("▁") <= 1 and not any(p.startswith("▁") for p in pieces[2:])
    # the text's own pieces: the tokenizer on the whole sentence gives the same ones
    assert "".join(pieces).lstrip("▁") == text
    assert all(s is None or text[s[0]:s[1]] == p for s, p in zip(f.spans[1:-1], pieces, strict=True) if p != "▁")


@pytest.mark.parametrize("word_spans, word_tags, token_spans, want", [
    ([(0, 2), (2, 4)], ["B-LOC", "O"], [(0, 1), (1, 2), (2, 3), (3, 4)], ["B-LOC", "I-LOC", "O", "O"]),
    ([(0, 3)], ["I-PER"], [(0, 1), (2, 3)], ["I-PER", "I-PER"]),
    ([(2, 4)], ["B-ORG"], [(0, 1), (2, 4), (5, 6)], ["O", "B-ORG", "O"]),
])
def test_project_tags_onto_other_tokens(word_spans, word_tags, token_spans, want):
    assert project_tags(word_spans, word_tags, token_spans) == want


def test_word_longer_than_window_is_an_error_not_a_cut(tok):
    with pytest.raises(ValueError, match="has more than 2 sub-words"):
        feats_of(tok, ["Donaudampfschifffahrtsgesellschaft"], max_len=4)


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
        ner_features(tok, ["ok", ""], [[(0, 2)], []], None, max_len=16)
