"""Route evidence from per-example dev scores: each route's paired bootstrap against ``task_only``, and
the default route for languages without evidence. Pure (numpy via madx.metrics), no model, no I/O;
madx/train/evidence.py (`madx-train evidence`) measures the rows, serving/routing.py reads what this writes.

``rows``: route -> one row per dev example, the additive counts of the task's metric (NER: each
sentence's (true positives, gold, predicted) entities; QA: each question's (F1 in [0, 1], 1)); or,
for a language with several dev sets (e.g. WikiANN and MasakhaNER), route -> {dev set: rows}: a
route's score is then the mean over its dev sets and the bootstrap is stratified by set, so a small
set from another domain cannot carry a route on its own.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from .metrics import f1_of_counts, mean_of_scores, paired_bootstrap

METRIC = {"ner": f1_of_counts, "qa": mean_of_scores}
UNIT = {"ner": "sentences", "qa": "questions"}
GENERIC = ("task_only", "english")  # the routes a language without an adapter of its own can take
Rows = Sequence | Mapping[str, Sequence]  # one dev set's rows, or dev set -> rows


def _sets(x: Rows, name: str) -> dict[str, Sequence]:
    return dict(x) if isinstance(x, Mapping) else {name: x}


def _score(task: str, sets: Mapping[str, Sequence]) -> float:
    return sum(float(METRIC[task](_sum(x))) for x in sets.values()) / len(sets)


def _compare(groups: Sequence[tuple[Sequence, Sequence]], task: str, resamples: int, interval: float,
             weights: Sequence[float] | None = None) -> tuple[dict, dict]:
    b = paired_bootstrap(groups, METRIC[task], resamples, interval, weights=weights)
    return {k: round(b[k], 2) for k in ("delta", "low", "high", "p_not_better")}, b


def language_evidence(task: str, measured_on: str, rows: Mapping[str, Rows], resamples: int = 2000,
                      interval: float = 0.95) -> dict:
    """One language's evidence: each route's score, and (where ``task_only`` was measured) each other
    route's bootstrap difference to it, ``vs_task_only``. With several dev sets, ``dev_sets`` names them."""
    sets = {r: _sets(x, measured_on) for r, x in rows.items()}
    scores = {r: round(_score(task, x), 2) for r, x in sets.items()}
    ev: dict = {"measured_on": measured_on, "metric": "F1", "scores": scores, "vs_task_only": {}}
    names = sorted({n for x in sets.values() for n in x})
    if len(names) > 1:
        ev["dev_sets"] = names
    for route, x in sets.items():
        if route != "task_only" and "task_only" in sets:
            t = sets["task_only"]
            if set(x) != set(t):
                raise ValueError(f"route {route!r} was measured on dev sets {sorted(x)}, task_only on {sorted(t)}")
            groups = [(x[n], t[n]) for n in sorted(x)]
            ev["vs_task_only"][route], b = _compare(groups, task, resamples, interval)
            ev["bootstrap"] = {"resamples": b["resamples"], "interval": b["interval"], "examples": b["examples"],
                               "unit": UNIT[task]}
    return ev


def _sum(x: Sequence) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).sum(0)  # (examples, k) -> (k,)


def measured_default(task: str, rows: Mapping[str, Mapping[str, Rows]], seen: Collection[str],
                     resamples: int = 2000, interval: float = 0.95) -> dict | None:
    """The route for languages without evidence, from the languages measured on their own dev data
    (``rows``: language -> route -> rows): over those the backbone did not see in pre-training (not in
    ``seen``), or over all of them where none is unseen (``languages: measured``). Candidates are the
    routes that need no adapter of the language's own (task_only, english) measured everywhere in the
    pool; the best on the mean of per-language scores, but ``english`` only when it beats task_only
    beyond the noise of a bootstrap stratified by language (each language weighs the same; a language
    with several dev sets: its score is their mean, and its sets share its weight in the bootstrap).
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
    avg = {r: round(sum(_score(task, _sets(x[r], lang)) for lang, x in pool.items()) / len(pool), 2) for r in generic}
    route = max(generic, key=lambda r: avg[r])  # a tie goes to task_only, listed first
    out = {"route": route, "over": sorted(pool), "scores": avg, "languages": over}
    if route != "task_only" and "task_only" in avg:
        groups, weights = [], []  # each language weighs the same: its k dev sets 1/k each
        for lang, x in pool.items():
            a, b = _sets(x[route], lang), _sets(x["task_only"], lang)
            groups += [(a[n], b[n]) for n in sorted(a)]
            weights += [1 / len(a)] * len(a)
        vs, _ = _compare(groups, task, resamples, interval, weights)
        out["vs_task_only"] = {route: vs}
        out["route"] = route if vs["low"] > 0 else "task_only"
    return out

