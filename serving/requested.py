"""A stack the client names per request (``stack`` in NER and QA requests), checked against what
is served. Pure: the engine passes in what is loaded.

- ``{"route": "task_only" | "madx" | "english" | "related:<code>" | "ensemble:<a>+<b>"}`` runs that
  route for the request's language (given, or detected);
- ``{"language_adapter": "sw", "task_adapter": "ner"}`` runs exactly that stack (either may be left
  out: no language adapter; the task's configured task adapter);
- ``task_adapter`` also goes with ``route``, to run a route over another task adapter (or the route
  names it: ``madx@ner-en``).

Rows of requests with different stacks still share forward passes (each row carries its stack).
"""

from __future__ import annotations

from collections.abc import Mapping

from madx.config import AdapterStack

from .limits import RequestError
from .routing import RouteError, split_adapter, stacks_for


def requested_stacks(task: str, req: Mapping[str, str | None], language: str | None, served: set[str],
                     task_adapters: set[str], stacked: str, alone: str, source: str) -> tuple[tuple[AdapterStack, ...], str]:
    """(the stacks to run, the route reason) for a requested stack; a RequestError 422 that lists
    what is served when the request names anything else."""
    route, lang, ta = req.get("route"), req.get("language_adapter"), req.get("task_adapter")
    if ta is not None and ta not in task_adapters:
        raise RequestError(422, f"stack.task_adapter {ta!r} is not a served {task} task adapter; served: "
                                f"{sorted(task_adapters)}")
    if lang is not None and lang not in served:
        raise RequestError(422, f"stack.language_adapter {lang!r} is not served; served language adapters: "
                                f"{sorted(served)}")
    if route is not None:
        if lang is not None:
            raise RequestError(422, "stack: give a route or a language_adapter, not both")
        if route.partition("@")[0] == "madx" and language is None:
            raise RequestError(422, "stack.route 'madx' needs the text's language: give 'language' (it was not "
                                    "detected)")
        try:
            if ta is not None and split_adapter(route)[1] is not None:
                raise RouteError(f"route {route!r} names its task adapter; give it there or in task_adapter, not both")
            stacks = stacks_for(route, language, ta or stacked, source, served, ta or alone, task_adapters)
        except RouteError as e:
            raise RequestError(422, f"stack.route: {e}; served language adapters: {sorted(served)}") from None
        what = f"route {route}"
    else:
        stacks = (AdapterStack(lang, ta or (stacked if lang else alone)),)
        what = "an explicit stack"
    shown = ", ".join(f"{s.language or 'no language adapter'} + {s.task}" for s in stacks)
    return stacks, f"requested: {what} ({shown})"
