"""Routing by evidence: which adapter stack(s) serve a (language, task), chosen from measured scores.

Pure policy, no torch and no I/O. The store's manifest carries the evidence (``routing``):

    "routing": {
      "evidence": {"sw": {"ner": {"measured_on": "sw", "metric": "F1", "scores": {"madx": 61.2,
                   "task_only": 63.0, "english": 58.1, "related:rw": 55.0, "ensemble:sw+rw": 62.4},
                   "vs_task_only": {"madx": {"delta": -1.8, "low": -4.0, "high": 0.4}, ...},
                   "bootstrap": {"resamples": 2000, "interval": 0.95, "examples": 300, "unit": "sentences"}}}},
      "default": {"ner": {"route": "task_only", "over": ["yo", "rw", ...], "scores": {...}}}
    }

Route names: ``madx`` (the language's own adapter under the task adapter), ``task_only``,
``english`` (the source language's adapter: the stack the task adapter was trained on),
``related:<code>`` (a related language's adapter) and ``ensemble:<a>+<b>...`` (each row run once
per listed language adapter in the same forward pass, outputs averaged; Wang et al. 2021, EMEA).
An ensemble member ``none`` is the stacked task adapter under no language adapter (``ensemble:zu+none``:
a target-ready task adapter with and without the language's adapter; one task adapter, so one label set).
A route may name its task adapter after ``@`` (``madx@ner-en``: the language's adapter under the task
adapter ``ner-en``, not the task's configured one), so one store can serve a language through a task
adapter trained for it (English through the stack trained on English alone) and the others through a
multi-source one; without ``@`` a route runs the task's stacked adapter (``task_only``: the one trained alone).

``choose`` takes, in order: an explicit override; the best measured route of the language (ties go to
the route listed first in ``PREFERENCE``: fewer adapters, less to go wrong). Where the evidence has a
paired bootstrap against ``task_only`` over the dev examples (``vs_task_only``), a route with more
adapters must beat ``task_only`` beyond that noise (the lower end of its interval above 0): a dev
set of 100 sentences often shows +2 F1 by chance, and the test set then disagrees. For a language without
evidence, the route that was best on average over the unseen languages (``languages: measured``: over
the languages with dev data, where none is unseen, as for QA here); and only then says it has no
evidence (``None``), so the caller keeps its older rules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from madx.config import AdapterStack

PREFERENCE = ("task_only", "madx", "english", "related", "ensemble")
NONE = "none"  # an ensemble member: no language adapter


@dataclass(frozen=True)
class Choice:
    route: str
    stacks: tuple[AdapterStack, ...]  # one per pass of each row (several for an ensemble)
    reason: str


@dataclass(frozen=True)
class Route:
    stack: AdapterStack  # the first (for an ensemble) or only stack
    language: str | None
    source: str  # request | detected | undetermined
    confidence: float | None
    fallback: str | None
    name: str = "madx"  # task_only | madx | english | related:<code> | ensemble:<a>+<b>, each maybe @<task adapter>
    reason: str = ""
    stacks: tuple[AdapterStack, ...] = ()  # every stack a row runs (outputs averaged); () = (stack,)

    @property
    def all_stacks(self) -> tuple[AdapterStack, ...]:
        return self.stacks or (self.stack,)

    def out(self) -> dict[str, Any]:
        st = lambda s: {"language": s.language, "task": s.task}  # noqa: E731
        return {"language": self.language, "language_source": self.source, "detection_confidence": self.confidence,
                "stack": st(self.stack), "fallback": self.fallback, "route": self.name, "route_reason": self.reason,
                "stacks": [st(s) for s in self.all_stacks] if len(self.all_stacks) > 1 else None}


class RouteError(ValueError):
    """A route name that is malformed or needs an adapter the store does not serve."""


def split_adapter(route: str) -> tuple[str, str | None]:
    """('madx', 'ner-en') for 'madx@ner-en'; (route, None) for a route without a task adapter."""
    base, at, adapter = route.partition("@")
    if at and not adapter:
        raise RouteError(f"route {route!r}: name the task adapter after '@' ('madx@ner-en') or leave '@' out")
    return base, adapter or None


def stacks_for(route: str, language: str | None, task: str, source: str, served: set[str],
               alone: str | None = None, task_adapters: set[str] | None = None) -> tuple[AdapterStack, ...]:
    """The stacks a route runs, checked against the served language adapters. ``task`` is the task
    adapter stacked on a language adapter; ``alone`` the one trained without a language adapter, which
    the ``task_only`` route runs (the server's ``tasks_alone``; ``task`` itself when None). A route's
    ``@<name>`` runs task adapter <name> in every stack instead, checked against ``task_adapters`` (the
    served task adapters of the task; unchecked when None)."""
    route, named = split_adapter(route)
    if named is not None:
        if task_adapters is not None and named not in task_adapters:
            raise RouteError(f"route {route}@{named} needs task adapter {named!r}, which is not served; served "
                             f"task adapters: {sorted(task_adapters)}")
        return stacks_for(route, language, named, source, served, named)
    if route == "task_only":
        return (AdapterStack(None, alone or task),)
    if route == "madx":
        langs = [language]
    elif route == "english":
        langs = [source]
    elif route.startswith("related:"):
        langs = [route.split(":", 1)[1]]
    elif route.startswith("ensemble:"):
        langs = [x for x in route.split(":", 1)[1].split("+") if x]
        if len(langs) < 2 or len(set(langs)) < len(langs):
            raise RouteError(f"route {route!r}: an ensemble needs at least two different members, language adapters "
                             f"or '{NONE}' ('ensemble:a+b', 'ensemble:a+{NONE}')")
    else:
        raise RouteError(f"route {route!r} is unknown; use task_only, madx, english, related:<code> or "
                         f"ensemble:<a>+<b>, each optionally @<task adapter>")
    missing = [x for x in langs if x not in served and not (x == NONE and route.startswith("ensemble:"))]
    if missing:
        raise RouteError(f"route {route!r} needs language adapters {missing}, which are not served")
    return tuple(AdapterStack(None if x == NONE else x, task) for x in langs)


def _rank(route: str) -> int:
    return PREFERENCE.index(split_adapter(route)[0].split(":", 1)[0])


def best(scores: Mapping[str, float], usable) -> str | None:
    """The highest-scoring usable route; ties go to the simpler route."""
    ok = [r for r in scores if usable(r)]
    return max(ok, key=lambda r: (scores[r], -_rank(r))) if ok else None


def beats_noise(route: str, scores: Mapping[str, float], noise: Mapping[str, Mapping] | None) -> bool:
    """Whether ``route`` may be served over ``task_only`` on this evidence: always without a bootstrap
    (``noise`` None: older evidence) or without a ``task_only`` score; else only when the lower end of
    its interval of the difference to ``task_only`` is above 0."""
    if noise is None or route == "task_only" or "task_only" not in scores:
        return True
    return route in noise and noise[route]["low"] > 0


def _interval(vs: Mapping, ev: Mapping) -> str:
    boot = ev.get("bootstrap") or {}
    pct = f"{100 * boot['interval']:.0f}% " if "interval" in boot else ""
    over = f" over {boot['examples']} {boot.get('unit', 'examples')}" if "examples" in boot else ""
    return f"{vs['delta']:+.1f}, {pct}interval {vs['low']:+.1f}..{vs['high']:+.1f}{over}"


def keyed_by_code(routing: Mapping, code_of: Callable[[str], str]) -> dict:
    """``routing`` with each language's evidence under the code a request for it is routed with,
    ``code_of(tag)`` (the server's rule; the tag itself where ``code_of`` raises ValueError): evidence
    written under an alias (a data set's 'tw') would never be found for a request routed as its
    canonical code ('ak'). Two entries for one language are a RouteError."""
    keyed: dict = {}
    for tag, ev in (routing.get("evidence") or {}).items():
        try:
            code = code_of(tag)
        except ValueError:
            code = tag
        if code in keyed:
            raise RouteError(f"routing evidence has two entries for language {code!r} (one of them under "
                             f"{tag!r}); keep one")
        keyed[code] = ev
    return {**routing, "evidence": keyed} if "evidence" in routing else dict(routing)


def choose(task: str, language: str | None, served: set[str], routing: Mapping, source: str = "en",
           overrides: Mapping[str, str] | None = None, adapter: str | None = None,
           alone: str | None = None, task_adapters: set[str] | None = None) -> Choice | None:
    """The route for one request (see the module doc); None when neither an override nor any
    evidence applies. The stacks name the task adapters ``adapter`` (stacked) and ``alone`` (trained
    alone, for ``task_only``), as in ``stacks_for``; both default to the task's name. ``task_adapters``:
    the served ones of the task, which a route's ``@<name>`` may name (any, when None)."""
    adapter = adapter or task
    overrides = overrides or {}

    def stacks(route: str) -> tuple[AdapterStack, ...]:
        return stacks_for(route, language, adapter, source, served, alone, task_adapters)

    def usable(route: str) -> bool:
        try:
            stacks(route)
            return True
        except RouteError:
            return False

    for key in (f"{language}:{task}", language, f"*:{task}"):
        if key is not None and key in overrides:
            route = overrides[key]
            return Choice(route, stacks(route), f"override {key}={route}")
    ev = ((routing.get("evidence") or {}).get(language) or {}).get(task) if language else None
    if ev and ev.get("scores"):
        scores, noise = ev["scores"], ev.get("vs_task_only")
        route = best(scores, lambda r: usable(r) and beats_noise(r, scores, noise))
        if route is not None:
            metric = ev.get("metric", "score")
            base = f", task_only {scores['task_only']:.1f}" if "task_only" in scores and route != "task_only" else ""
            where = "its own" if ev.get("measured_on") == language else f"{ev.get('measured_on')}'s"
            reason = f"best of {len(scores)} measured routes on {where} dev data ({metric} {scores[route]:.1f}{base})"
            top = best(scores, usable)
            if noise is not None and route != "task_only" and route in noise:
                reason += f"; beats task_only beyond noise ({_interval(noise[route], ev)})"
            if top != route and top in (noise or {}):
                reason += (f"; {top} scored {scores[top]:.1f} but did not beat task_only beyond noise "
                           f"({_interval(noise[top], ev)})")
            return Choice(route, stacks(route), reason)
    default = (routing.get("default") or {}).get(task)
    if default and default.get("route"):
        route = default["route"]
        if not usable(route):  # e.g. 'madx' for a language without an adapter
            route = best(default.get("scores") or {}, usable) or "task_only"
        who = f"{language!r} has" if language else "an undetermined language has"
        return Choice(route, stacks(route),
                      f"{who} no evidence: best route on average over {len(default.get('over', []))} "
                      f"{default.get('languages', 'unseen')} languages")
    return None
