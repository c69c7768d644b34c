"""Words with exact character spans in the ORIGINAL string, and word tags -> entities.

Offsets count Unicode code points (Python ``str`` indexing), ``end`` exclusive, so for every
entity ``text == input[start:end]`` holds by construction: spans are slices of the input, never
re-built from normalised or decoded tokens.

Segmentation: whitespace separates words; every punctuation or symbol character is a word of its
own (as in CoNLL/WikiANN tokenisation), and so is every Han ideograph and kana (Chinese and
Japanese are written without spaces; WikiANN zh/ja tag characters); combining marks, format characters (ZWJ, ZWNJ), variation
selectors and emoji modifiers stay attached to the character before them, so a grapheme cluster
is never split.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Word:
    text: str
    start: int
    end: int


CJK = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F))


def _kind(ch: str) -> str:
    if ch.isspace():
        return "space"
    o = ord(ch)
    if any(a <= o <= b for a, b in CJK):
        return "single"
    cat = unicodedata.category(ch)
    if cat[0] == "M" or cat in ("Cf", "Sk"):
        return "attach"
    if cat[0] in "PS":
        return "single"
    return "word"


def split_words(text: str) -> list[Word]:
    spans: list[list[int]] = []  # [start, end)
    prev = "space"
    for i, ch in enumerate(text):
        k = _kind(ch)
        if k == "space":
            prev = k
        elif i and text[i - 1] == "\u200d" and spans and spans[-1][1] == i:
            spans[-1][1] = i + 1  # ZWJ sequence (e.g. emoji): one cluster
        elif k == "attach" and spans and prev != "space":
            spans[-1][1] = i + 1  # stays with the cluster before it
        elif k != "single" and prev == "word":
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
            prev = "single" if k == "single" else "word"
    return [Word(text[a:b], a, b) for a, b in spans]


@dataclass(frozen=True)
class Entity:
    text: str
    label: str
    start: int
    end: int
    score: float


def entities_from_words(text: str, words: Sequence[Word], tags: Sequence[str], scores: Sequence[float]) -> list[Entity]:
    """IOB word tags -> entities (an I- after O or another type starts a new one, as seqeval).
    The score is the mean of the entity's word probabilities."""
    out: list[Entity] = []
    cur: tuple[str, int, list[float]] | None = None  # (type, first word, scores)

    def close(last: int) -> None:
        if cur is not None:
            t, first, sc = cur
            a, b = words[first].start, words[last].end
            out.append(Entity(text[a:b], t, a, b, round(sum(sc) / len(sc), 4)))

    for i, (tag, sc) in enumerate(zip(tags, scores, strict=True)):
        bio, _, t = tag.partition("-")
        if bio == "B" or (bio == "I" and (cur is None or cur[0] != t)):
            close(i - 1)
            cur = (t, i, [sc])
        elif bio == "I":
            cur[2].append(sc)  # type: ignore[index]
        else:
            close(i - 1)
            cur = None
    close(len(tags) - 1)
    return out
