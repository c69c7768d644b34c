"""Words as people write them, with exact character spans: Unicode word segmentation.

``split_words`` cuts a text into words with ICU's word break iterator (``icu4py``): the UAX #29
default word boundaries, plus ICU's dictionaries for the scripts written without spaces (Chinese,
Japanese, Thai, Lao, Khmer, Myanmar), so ``北京`` or ``กรุงเทพมหานคร`` is one word, not one word a
character. UAX #29 keeps apostrophes inside words (``n'inshuti``, ``Thiong'o``), numbers with their
separators (``3.50``) and never splits a grapheme cluster (``🇫🇷``, ZWJ emoji, combining marks).

On top of ICU's segments: spaces are not words, and invisible format characters (category Cf,
e.g. U+200B, U+200E, U+202C) are trimmed from a word's ends (except the tags that close an emoji tag
sequence such as 🏴󠁧󠁢󠁥󠁮󠁧󠁿), so no word or entity starts or ends in one. Punctuation marks are
words of their own, as in CoNLL/WikiANN.

Offsets are Python ``str`` indices (code points), ``end`` exclusive: ``text[w.start:w.end] == w.text``
always. (ICU counts UTF-16 units; the conversion is done here.)

``join_words`` goes the other way for pre-tokenised data (CoNLL/WikiANN sentences): the text a
person would have written, with each word's span.
"""

from __future__ import annotations

import bisect
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import regex
from icu4py.breakers import CharacterBreaker, WordBreaker


@dataclass(frozen=True)
class Word:
    text: str
    start: int
    end: int


def _code_points(text: str) -> list[int] | None:
    """UTF-16 offset -> code point index (None when the text has no character outside the BMP,
    where the two agree)."""
    if all(ord(c) < 0x10000 for c in text):
        return None
    units = [0, *accumulate(2 if ord(c) >= 0x10000 else 1 for c in text)]  # code point i starts at units[i]
    back = [0] * (units[-1] + 1)
    for i, u in enumerate(units):
        back[u] = i
    return back


def _segments(breaker, text: str) -> list[tuple[int, int]]:
    cp = _code_points(text)
    segs = list(breaker(text, "root").segments())
    return segs if cp is None else [(cp[a], cp[b]) for a, b in segs]


def invisible(ch: str) -> bool:
    """A space, or a format character (Cf) that is not part of an emoji tag sequence (U+E0020-E007F,
    which end in the Cf CANCEL TAG and must stay whole)."""
    return ch.isspace() or (unicodedata.category(ch) == "Cf" and not 0xE0020 <= ord(ch) <= 0xE007F)


def clusters(text: str) -> list[tuple[int, int]]:
    """The text's grapheme clusters (UAX #29 extended, ICU), as code point spans in order."""
    return _segments(CharacterBreaker, text) if text else []


def blank_cluster(cluster: str) -> bool:
    """A cluster that shows nothing: spaces and format characters, or tag characters without a base."""
    return all(invisible(c) or 0xE0000 <= ord(c) <= 0xE007F for c in cluster)


def visible_span(text: str, a: int, b: int, bounds: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """``(a, b)`` widened to the grapheme clusters it touches (``bounds``: ``clusters(text)``), then
    without the clusters at either end that show nothing; None when nothing visible is left. A span
    never splits a cluster (a flag, an emoji ZWJ sequence, a letter and its marks)."""
    i = bisect.bisect_right(bounds, (a, len(text) + 1)) - 1  # the cluster holding a
    j = bisect.bisect_left(bounds, (b, -1)) - 1  # the cluster holding b - 1
    i, j = max(i, 0), min(j, len(bounds) - 1)
    while i <= j and blank_cluster(text[bounds[i][0]:bounds[i][1]]):
        i += 1
    while j >= i and blank_cluster(text[bounds[j][0]:bounds[j][1]]):
        j -= 1
    return (bounds[i][0], bounds[j][1]) if i <= j else None


def split_words(text: str) -> list[Word]:
    """Words: UAX #29 word segments on grapheme-cluster boundaries, without the clusters at their
    ends that show nothing; disjoint and in order."""
    out: list[Word] = []
    bounds = clusters(text)
    for a, b in _segments(WordBreaker, text) if text else ():
        span = visible_span(text, a, b, bounds)
        if span is None:
            continue
        a, b = span
        if out and a < out[-1].end:  # a word boundary inside a cluster: one word, never a split cluster
            a = out.pop().start
        out.append(Word(text[a:b], a, b))
    return out


# Scripts written without spaces between words: pre-tokenised data in these scripts (WikiANN zh/ja
# tag single characters) is joined without a space, as the text was written.
_UNSPACED = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
                          r"\p{Block=CJK_Symbols_And_Punctuation}\p{Block=Halfwidth_And_Fullwidth_Forms}]")


def join_words(tokens: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """A pre-tokenised sentence as text: tokens joined by one space, except between two characters
    of scripts written without spaces. Returns (text, the span of each token)."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for i, t in enumerate(tokens):
        if i and not (t and tokens[i - 1] and _UNSPACED.match(tokens[i - 1][-1]) and _UNSPACED.match(t[0])):
            parts.append(" ")
            pos += 1
        spans.append((pos, pos + len(t)))
        parts.append(t)
        pos += len(t)
    return "".join(parts), spans
