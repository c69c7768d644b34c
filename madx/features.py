"""Turn words and texts into model inputs without silent truncation.

- NER: a text and its words (character spans) -> sub-word windows. Each word is tokenised on its
  own, with the sentencepiece word marker only where the text has a space before it (or at the
  start), so a sub-word never straddles two words and a run of Chinese words is not turned into
  ``▁`` + character pairs. A word's label lives on its first sub-word that carries characters of the
  word (a bare ``▁`` piece never does); other sub-words get IGNORE. Sentences longer than
  ``max_len`` are split into several windows at word boundaries, never cut.
- QA: (question, context) -> overlapping windows (``stride`` tokens shared), with each token's
  character span in the ORIGINAL context, so any answer span maps back exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .words import invisible

IGNORE = -100


@dataclass(frozen=True)
class NerFeature:
    input_ids: list[int]
    labels: list[int]  # IGNORE except on each word's first character-carrying sub-word
    word_ids: list[int | None]  # the word whose label this token carries; None for specials and other sub-words
    spans: list[tuple[int, int] | None]  # the characters of the text each token carries; None when none
    sentence: int  # index of the source sentence


def _word_tokenizer(tokenizer):
    """The fast tokenizer's backend, set so that a pre-split word gets the sentencepiece ``▁``
    marker only when we write a space before it (XLM-R's Metaspace would add one to every word)."""
    cached = getattr(tokenizer, "_madx_word_backend", None)
    if cached is not None:
        return cached
    from tokenizers import pre_tokenizers

    bt = tokenizer.backend_tokenizer
    spaced = isinstance(bt.pre_tokenizer, pre_tokenizers.Metaspace)
    if spaced:
        bt = copy.deepcopy(bt)
        bt.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
        bt.no_truncation()
        bt.no_padding()
    tokenizer._madx_word_backend = (bt, spaced)
    return tokenizer._madx_word_backend


def ner_features(tokenizer, texts: Sequence[str], words: Sequence[Sequence[tuple[int, int]]],
                 labels: Sequence[Sequence[int]] | None, max_len: int, skip_empty: bool = False) -> list[NerFeature]:
    """One or more windows per text; every word lands in exactly one window. ``words[i]`` are the
    (start, end) character spans of text i's words, in order, not overlapping. A text without tokens
    is an error, or gets no window with ``skip_empty`` (serving: nothing to tag)."""
    bt, spaced = _word_tokenizer(tokenizer)
    out: list[NerFeature] = []
    room = max_len - 2  # <s> ... </s>
    pieces = []
    for text, ws in zip(texts, words, strict=True):
        if spaced:  # a space before the word in the text (or the text's start) -> "▁word"
            pieces.append([(" " if a == 0 or text[a - 1].isspace() else "") + text[a:b] for a, b in ws])
        else:
            pieces.append([text[a:b] for a, b in ws])
    encs = bt.encode_batch(pieces, is_pretokenized=True, add_special_tokens=False) if pieces else []
    for si, (enc, ws) in enumerate(zip(encs, words, strict=True)):
        ids, wids, toks = enc.ids, enc.word_ids, enc.tokens
        spans: list[tuple[int, int] | None] = []
        owner: list[int | None] = []  # the word whose label token k carries
        seen: set[int] = set()
        for k, ((a, b), w) in enumerate(zip(enc.offsets, wids, strict=True)):
            shift = ws[w][0] - (len(pieces[si][w]) - (ws[w][1] - ws[w][0]))  # word start minus our space
            a, b = max(a + shift, ws[w][0]), b + shift
            carries = a < b and toks[k].strip("▁") != ""
            spans.append((a, b) if carries else None)
            owner.append(w if carries and w not in seen else None)
            if carries:
                seen.add(w)
        if not seen:  # no tokens, or only bare "▁" markers of characters the tokenizer drops
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
                a, b = ws[wids[start]]
                word = texts[si][a:b]
                shown = repr(word) if len(word) <= 40 else f"{word[:40]!r}... ({len(word)} characters)"
                raise ValueError(f"sentence {si}: word {shown} has more than {room} sub-words")
            w = [None, *owner[start:end], None]
            lab = [IGNORE] * len(w)
            if labels is not None:
                for k in range(1, len(w) - 1):
                    if w[k] is not None:
                        lab[k] = labels[si][w[k]]
            out.append(NerFeature([tokenizer.cls_token_id, *ids[start:end], tokenizer.sep_token_id], lab, w,
                                  [None, *spans[start:end], None], si))
            start = end
    return out


def project_tags(word_spans: Sequence[tuple[int, int]], word_tags: Sequence[str],
                 token_spans: Sequence[tuple[int, int]]) -> list[str]:
    """Word tags -> tags of another tokenisation of the same text (for scoring what the server
    predicts on its own words against gold tokens): a token takes the tag of the word holding its
    first character; a token that does not start that word continues it (B-X -> I-X); a token in no
    word is O."""
    out = []
    j = 0
    for a, _b in token_spans:
        while j < len(word_spans) and word_spans[j][1] <= a:
            j += 1
        if j == len(word_spans) or word_spans[j][0] > a:
            out.append("O")
            continue
        tag = word_tags[j]
        out.append("I" + tag[1:] if tag.startswith("B-") and word_spans[j][0] < a else tag)
    return out


@dataclass(frozen=True)
class QaWindow:
    input_ids: list[int]
    offsets: list[tuple[int, int] | None]  # context char span of each token; None for question/specials
    # and for tokens without a visible character
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


def _trim(context: str, a: int, b: int) -> tuple[int, int] | None:
    """A token's span without the spaces and invisible format characters (U+200B, U+200E, ...) at
    its ends, so an answer never starts or ends with one; None for a token of nothing else, which
    carries no visible character and so is no context token (never a target, never an answer)."""
    while a < b and invisible(context[a]):
        a += 1
    while b > a and invisible(context[b - 1]):
        b -= 1
    return (a, b) if a < b else None


def pad(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-pad to (B, T_max)."""
    T = max(len(s) for s in seqs)
    out = torch.full((len(seqs), T), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out

