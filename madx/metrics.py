"""Evaluation metrics: entity-level NER F1 (seqeval/conlleval default mode) and SQuAD EM/F1."""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """IOB tags -> {(type, start, end_exclusive)}. As conlleval/seqeval (non-strict): an I- tag
    after O or after another type starts a new entity."""
    out: set[tuple[str, int, int]] = set()
    etype, start = None, 0
    for i, tag in enumerate([*tags, "O"]):
        bio, _, t = tag.partition("-")
        begins = bio == "B" or (bio == "I" and t != etype)
        if etype is not None and (bio == "O" or begins):
            out.add((etype, start, i))
            etype = None
        if begins:
            etype, start = t, i
    return out


def ner_f1(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """Micro precision/recall/F1 over entities, plus per-type F1."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    tp: collections.Counter = collections.Counter()
    n_gold: collections.Counter = collections.Counter()
    n_pred: collections.Counter = collections.Counter()
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
        ge, pe = entities(g), entities(p)
        for e in ge:
            n_gold[e[0]] += 1
        for e in pe:
            n_pred[e[0]] += 1
        for e in ge & pe:
            tp[e[0]] += 1

    def prf(t: int, ng: int, np_: int) -> tuple[float, float, float]:
        p = t / np_ if np_ else 0.0
        r = t / ng if ng else 0.0
        return p, r, (2 * p * r / (p + r) if p + r else 0.0)

    p, r, f = prf(sum(tp.values()), sum(n_gold.values()), sum(n_pred.values()))
    per_type = {t: prf(tp[t], n_gold[t], n_pred[t])[2] for t in sorted(set(n_gold) | set(n_pred))}
    return {"precision": p, "recall": r, "f1": f, "per_type_f1": per_type, "gold_entities": sum(n_gold.values())}


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 official: lower case, drop punctuation and articles, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], golds: dict[str, Sequence[str]]) -> dict:
    """Official SQuAD v1.1 EM and F1 (max over gold answers), in percent; missing predictions score 0."""
    if not golds:
        raise ValueError("no gold questions to score")
    em = f1 = 0.0
    for qid, answers in golds.items():
        pred = predictions.get(qid, "")
        em += max(float(normalize_answer(pred) == normalize_answer(a)) for a in answers)
        f1 += max(_f1(pred, a) for a in answers)
    n = len(golds)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n, "count": n,
            "missing": sum(1 for q in golds if q not in predictions)}
