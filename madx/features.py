"""Turn words and texts into model inputs without silent truncation.

- NER: words -> sub-word ids; the label of a word goes on its first sub-word, others get IGNORE.
  Sentences longer than ``max_len`` are split into several windows, never cut.
- QA: (question, context) -> overlapping windows (``stride`` tokens shared), with each token's
  character span in the ORIGINAL context, so any answer span maps back exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

IGNORE = -100


@dataclass(frozen=True)
class NerFeature:
    input_ids: list[int]
    labels: list[int]  # IGNORE except on each word's first sub-word
    word_ids: list[int | None]  # index into the sentence's words, None for specials
    sentence: int  # index of the source sentence


def ner_features(tokenizer, sentences: Sequence[Sequence[str]], labels: Sequence[Sequence[int]] | None,
                 max_len: int, skip_empty: bool = False) -> list[NerFeature]:
    """One or more windows per sentence; every word lands in exactly one window. A sentence
    without tokens is an error, or gets no window with ``skip_empty`` (serving: nothing to tag)."""
    out: list[NerFeature] = []
    room = max_len - 2  # <s> ... </s>
    for si, words in enumerate(sentences):
        enc = tokenizer(list(words), is_split_into_words=True, add_special_tokens=False)
        ids, wids = enc["input_ids"], enc.word_ids()
        first = [k == 0 or wids[k] != wids[k - 1] for k in range(len(ids))]  # first sub-word of a word
        if not ids:
            if skip_empty:
                continue
            raise ValueError(f"sentence {si} has no tokens")
        # window boundaries at word starts, so a word's sub-words never straddle two windows
        start = 0
        while start < len(ids):
            end = min(start + room, len(ids))
            while end < len(ids) and end > start and wids[end] == wids[end - 1]:
                end -= 1
            if end == start:  # one word longer than a window: it cannot be represented faithfully
                raise ValueError(f"sentence {si}: word {words[wids[start]]!r} has more than {room} sub-words")
            w = [None, *wids[start:end], None]
            lab = [IGNORE] * len(w)
            if labels is not None:
                for k in range(start, end):
                    if first[k]:
                        lab[k - start + 1] = labels[si][wids[k]]
            out.append(NerFeature([tokenizer.cls_token_id, *ids[start:end], tokenizer.sep_token_id], lab, w, si))
            start = end
    return out


@dataclass(frozen=True)
class QaWindow:
    input_ids: list[int]
    offsets: list[tuple[int, int] | None]  # context char span of each token; None for question/specials
    start_position: int  # answer start token, 0 (<s>) when the answer is not inside this window
    end_position: int


def qa_windows(tokenizer, question: str, context: str, max_len: int = 384, stride: int = 128,
               answer: tuple[str, int] | None = None) -> list[QaWindow]:
    """All windows over the context (none dropped); ``stride`` tokens overlap between windows."""
    enc = tokenizer(question, context, truncation="only_second", max_length=max_len, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    windows = []
    for i, ids in enumerate(enc["input_ids"]):
        seq = enc.sequence_ids(i)
        offs = [_trim(context, *o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i], seq, strict=True)]
        sp = ep = 0
        if answer is not None:
            a0, a1 = answer[1], answer[1] + len(answer[0])
            toks = [j for j, o in enumerate(offs) if o is not None and o[0] < a1 and o[1] > a0]
            if toks and offs[toks[0]][0] <= a0 and offs[toks[-1]][1] >= a1:
                sp, ep = toks[0], toks[-1]
        windows.append(QaWindow(list(ids), offs, sp, ep))
    return windows


def _trim(context: str, a: int, b: int) -> tuple[int, int]:
    """A token's span without the whitespace its "▁" marker may cover, so answers never start
    or end with a space."""
    while a < b and context[a].isspace():
        a += 1
    return a, b
