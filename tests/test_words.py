"""Word segmentation (UAX #29 + ICU dictionaries via icu4py) with exact offsets, as people write words."""

from __future__ import annotations

import unicodedata

import pytest

from madx.words import join_words, split_words
from serving.text import split_words as served_split_words


@pytest.mark.parametrize("text, words", [
    # scripts written without spaces: dictionary words, not one word a character
    ("国家主席习近平在北京会见了美国总统拜登。", ["国家", "主席", "习", "近平", "在", "北京", "会见", "了", "美国", "总统",
                                          "拜", "登", "。"]),
    ("東京都知事の小池百合子は大阪を訪れた。", ["東京", "都知事", "の", "小池", "百合子", "は", "大阪", "を", "訪れ", "た",
                                          "。"]),
    ("กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย", ["กรุงเทพมหานคร", "เป็น", "เมือง", "หลวง", "ของ", "ประเทศไทย"]),
    ("ရန်ကုန်မြို့သည်", ["ရန်", "ကုန်", "မြို့", "သည်"]),
    ("ភ្នំពេញជារាជធានីនៃកម្ពុជា", ["ភ្នំពេញ", "ជា", "រាជធានី", "នៃ", "កម្ពុជា"]),
    ("東京でApple社のCEOに会った", ["東京", "で", "Apple", "社", "の", "CEO", "に", "会", "っ", "た"]),  # mixed scripts
    # apostrophes inside a word stay inside it
    ("Nabonye y'u n'inshuti", ["Nabonye", "y'u", "n'inshuti"]),
    ("n'ime ụlọ", ["n'ime", "ụlọ"]),
    ("kinyang'anyiro cha Ngũgĩ wa Thiong'o.", ["kinyang'anyiro", "cha", "Ngũgĩ", "wa", "Thiong'o", "."]),
    # a grapheme cluster is never split
    ("Macron🇫🇷 à Paris", ["Macron", "🇫🇷", "à", "Paris"]),
    ("👩\u200d💻 works 👍🏽", ["👩\u200d💻", "works", "👍🏽"]),
    ("e\u0301te\u0301  café\n", ["e\u0301te\u0301", "café"]),
    ("नमस्ते दुनिया", ["नमस्ते", "दुनिया"]),
    # invisible format characters never start or end a word
    ("Reykjavík\u200e og\u200b Paris\u202c.", ["Reykjavík", "og", "Paris", "."]),
    ("\u200fמרחבא\u200f x", ["מרחבא", "x"]),
    ("Angela Merkel, in Paris.", ["Angela", "Merkel", ",", "in", "Paris", "."]),
    ("مرحبا بالعالم!", ["مرحبا", "بالعالم", "!"]),  # RTL
    ("\u0301abc", ["\u0301", "abc"]),  # a leading mark is kept (its own grapheme cluster), not dropped
    ("   \u200b ", []),
])
def test_split_words_as_people_write_them(text, words):
    got = split_words(text)
    assert [w.text for w in got] == words
    assert all(text[w.start:w.end] == w.text for w in got)
    assert served_split_words(text) == got  # the server cuts words with this very function


def test_offsets_are_code_points_after_astral_characters():
    text = "𝐀𝐁 😀 Nairobi 🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f Kenya"  # ICU counts UTF-16
    got = split_words(text)
    assert [w.text for w in got] == ["𝐀𝐁", "😀", "Nairobi", text[13:20], "Kenya"]
    assert all(text[w.start:w.end] == w.text for w in got)
    assert not any(unicodedata.category(w.text[-1]) == "Cf" for w in got[:3])


@pytest.mark.parametrize("tokens, text", [
    (["EU", "rejects", "German", "call", "."], "EU rejects German call ."),
    (["中", "华", "人", "民", "。"], "中华人民。"),
    (["在", "Apple", "公", "司"], "在 Apple 公司"),
])
def test_join_words_writes_unspaced_scripts_without_spaces(tokens, text):
    got, spans = join_words(tokens)
    assert got == text and [got[a:b] for a, b in spans] == tokens
