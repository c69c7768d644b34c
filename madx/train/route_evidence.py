"""Route evidence from per-example dev scores: each route's paired bootstrap against ``task_only``, and
the default route for languages without evidence. Pure (numpy via madx.metrics), no model, no I/O;
madx/train/evidence.py (`madx-train evidence`) measures the rows, serving/routing.py reads what this writes.

``rows``: route -> one row per dev example, the additive counts of the task's metric (NER: each
sentence's (true positives, gold, predicted) entities; QA: each question's (F1 in [0, 1], 1)).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from .metrics import f1_of_counts, mean_of_scores, paired_bootstrap

METRIC = {"ner": f1_of_counts, "qa": mean_of_scores}
UNIT = {"ner": "sentences", "qa": "questions"}
GENERIC = ("task_only", "english")  # the routes a language without an adapter of its own can take


def _compare(groups: Sequence[tuple[Sequence, Sequence]], task: str, resamples: int, interval: float) -> tuple[dict, dict]:
    b = paired_bootstrap(groups, METRIC[task], resamples, interval)
    return {k: round(b[k], 2) for k in ("delta", "low", "high", "p_not_better")}, b


def language_evidence(task: str, measured_on: str, rows: Mapping[str, Sequence], resamples: int = 2000,
                      interval: float = 0.95) -> dict:
    """One language's evidence: each route's score, and (where ``task_only`` was measured) each other
    route's bootstrap difference to it, ``vs_task_only``."""
    metric = METRIC[task]
    scores = {r: round(float(metric(_sum(x))), 2) for r, x in rows.items()}
    ev: dict = {"measured_on": measured_on, "metric": "F1", "scores": scores, "vs_task_only": {}}
    for route, x in rows.items():
        if route != "task_only" and "task_only" in rows:
            ev["vs_task_only"][route], b = _compare([(x, rows["task_only"])], task, resamples, interval)
            ev["bootstrap"] = {"resamples": b["resamples"], "interval": b["interval"], "examples": b["examples"],
                               "unit": UNIT[task]}
    return ev


def _sum(x: Sequence) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).sum(0)  # (examples, k) -> (k,)


def measured_default(task: str, rows: Mapping[str, Mapping[str, Sequence]], seen: Collection[str],
                     resamples: int = 2000, interval: float = 0.95) -> dict | None:
    """The route for languages without evidence, from the languages measured on their own dev data
    (``rows``: language -> route -> rows): over those the backbone did not see in pre-training (not in
    ``seen``), or over all of them where none is unseen (``languages: measured``). Candidates are the
    routes that need no adapter of the language's own (task_only, english) measured everywhere in the
    pool; the best on the mean of per-language scores, but ``english`` only when it beats task_only
    beyond the noise of a bootstrap stratified by language (each language weighs the same).
    None when the pool is empty or has no common candidate."""
    pool, over = {lang: r for lang, r in rows.items() if lang not in seen}, "unseen"
    if not pool:  # e.g. QA here: dev data only in languages e5 saw; the best evidence there is
        pool, over = dict(rows), "measured"
    if not pool:
        return None
    common = set.intersection(*(set(r) for r in pool.values()))
    generic = [r for r in GENERIC if r in common]
    if not generic:
        return None
    metric = METRIC[task]
    avg = {r: round(sum(float(metric(_sum(x[r]))) for x in pool.values()) / len(pool), 2) for r in generic}
    route = max(generic, key=lambda r: avg[r])  # a tie goes to task_only, listed first
    out = {"route": route, "over": sorted(pool), "scores": avg, "languages": over}
    if route != "task_only" and "task_only" in avg:
        vs, _ = _compare([(x[route], x["task_only"]) for x in pool.values()], task, resamples, interval)
        out["vs_task_only"] = {route: vs}
        out["route"] = route if vs["low"] > 0 else "task_only"
    return out
