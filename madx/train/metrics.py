"""Evaluation metrics: entity-level NER F1 (seqeval/conlleval default mode), SQuAD EM/F1, and a
paired bootstrap of the difference between two systems scored on the same examples."""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable, Sequence

import numpy as np


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
    """Micro precision/recall/F1 over entities, plus per-type F1, and ``per_sentence``: each
    sentence's (true positives, gold entities, predicted entities), the counts micro F1 sums
    (``f1_of_counts``), for a bootstrap over sentences."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    tp: collections.Counter = collections.Counter()
    n_gold: collections.Counter = collections.Counter()
    n_pred: collections.Counter = collections.Counter()
    each = []
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
        ge, pe = entities(g), entities(p)
        each.append((len(ge & pe), len(ge), len(pe)))
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
    return {"precision": p, "recall": r, "f1": f, "per_type_f1": per_type, "gold_entities": sum(n_gold.values()),
            "per_sentence": each}


def f1_of_counts(sums: np.ndarray) -> np.ndarray:
    """Micro F1 in percent from summed (tp, gold, predicted) counts: (..., 3) -> (...); 0 without entities."""
    tp, denom = sums[..., 0], sums[..., 1] + sums[..., 2]
    return np.where(denom > 0, 200.0 * tp / np.maximum(denom, 1), 0.0)


def mean_of_scores(sums: np.ndarray) -> np.ndarray:
    """Mean in percent from summed (score in [0, 1], count) rows: (..., 2) -> (...)."""
    return 100.0 * sums[..., 0] / np.maximum(sums[..., 1], 1)


def paired_bootstrap(groups: Sequence[tuple[Sequence, Sequence]], metric: Callable[[np.ndarray], np.ndarray],
                     resamples: int = 2000, interval: float = 0.95, seed: int = 0,
                     weights: Sequence[float] | None = None) -> dict:
    """The difference A - B of a corpus metric between two systems scored on the same examples, with
    a percentile bootstrap interval (Koehn 2004; Berg-Kirkpatrick et al. 2012): the examples are
    resampled with replacement, the same draw for both systems, so what they share cancels.

    ``groups``: one (A rows, B rows) pair per data set, each row an example's additive counts (e.g.
    ``ner_f1``'s per_sentence, or (F1, 1) per question); each group is resampled on its own
    (stratified) and the statistic is the mean over groups of metric(sum A) - metric(sum B) (weighted
    by ``weights``, one per group, where given: e.g. a language's two dev sets at 1/2 each).
    ``metric`` maps summed rows (..., k) to scores (...), e.g. ``f1_of_counts``. Returns the observed
    ``delta``, the ``low``/``high`` ends of the central ``interval``, and ``p_not_better``: the share
    of resamples where A did not beat B."""
    if not groups:
        raise ValueError("paired_bootstrap needs at least one group of examples")
    rng = np.random.default_rng(seed)
    observed, draws = [], []
    for i, (a, b) in enumerate(groups):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape or a.ndim != 2 or len(a) == 0:
            raise ValueError(f"group {i}: A {a.shape} and B {b.shape} must be the same non-empty (examples, k) shape")
        observed.append(metric(a.sum(0)) - metric(b.sum(0)))
        idx = rng.integers(0, len(a), size=(resamples, len(a)))  # (resamples, examples)
        draws.append(metric(a[idx].sum(1)) - metric(b[idx].sum(1)))  # (resamples,)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    if w is not None and (w.shape != (len(groups),) or (w < 0).any() or w.sum() <= 0):
        raise ValueError(f"weights {list(weights)} must be {len(groups)} non-negative numbers, not all 0")
    d = np.average(draws, axis=0, weights=w)  # (resamples,)
    tail = (1 - interval) / 2
    return {"delta": float(np.average(observed, weights=w)), "low": float(np.quantile(d, tail)),
            "high": float(np.quantile(d, 1 - tail)), "p_not_better": float(np.mean(d <= 0)),
            "resamples": resamples, "interval": interval, "examples": sum(len(a) for a, _ in groups)}


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
    """Official SQuAD v1.1 EM and F1 (max over gold answers), in percent; missing predictions score 0.
    ``per_question``: each question's (F1 in [0, 1], 1), in the order of ``golds``, for a bootstrap
    (``mean_of_scores``)."""
    if not golds:
        raise ValueError("no gold questions to score")
    em = f1 = 0.0
    each = []
    for qid, answers in golds.items():
        pred = predictions.get(qid, "")
        em += max(float(normalize_answer(pred) == normalize_answer(a)) for a in answers)
        q = max(_f1(pred, a) for a in answers)
        f1 += q
        each.append((q, 1))
    n = len(golds)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n, "count": n,
            "missing": sum(1 for q in golds if q not in predictions), "per_question": each}
