"""Words with exact character spans in the ORIGINAL string, and word tags -> entities.

Offsets count Unicode code points (Python ``str`` indexing), ``end`` exclusive, so for every
entity ``text == input[start:end]`` holds by construction: spans are slices of the input, never
re-built from normalised or decoded tokens.

Segmentation is ``madx.words.split_words``: Unicode word boundaries (UAX #29) with ICU's dictionaries
for scripts written without spaces; a grapheme cluster is never split and no word starts or ends
with a cluster that shows nothing (spaces, format characters, tag characters without a base), so no
entity does either. QA answers are put on cluster boundaries the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from madx.words import Word, clusters, split_words, visible_span

__all__ = ["Entity", "Word", "clusters", "entities_from_words", "split_words", "visible_span"]


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
