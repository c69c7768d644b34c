"""Token-budget dynamic batching across requests, languages and tasks.

Requests put their windows (token id lists, each with its own adapter stack) in one queue. A
single worker takes what is queued (waiting at most ``max_wait_ms`` for more), sorts it by length
and cuts it into forward passes of at most ``max_batch_tokens`` padded tokens and
``max_batch_rows`` rows; one pass mixes any stacks. The model runs on the process's one compute
thread (``serving/compute.py``) so the event loop keeps accepting requests. The queue is bounded:
beyond ``max_queue_rows`` waiting windows a request is refused at once (``Overloaded`` -> HTTP 503
with Retry-After).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from madx.config import AdapterStack

from . import compute
from .metrics import Metrics


class Overloaded(Exception):
    pass


@dataclass
class Row:
    ids: list[int]
    stack: AdapterStack
    future: asyncio.Future
    request: int = 0


RunFn = Callable[[list[list[int]], list[AdapterStack]], list[np.ndarray]]


def plan_batches(lengths: Sequence[int], max_tokens: int, max_rows: int, pass_cost: int = 128) -> list[list[int]]:
    """Indices sorted by length, cut into consecutive batches that minimise padded tokens plus
    ``pass_cost`` token-equivalents of fixed cost per forward pass, each batch within
    ``max_tokens`` padded tokens (rows x longest) and ``max_rows`` rows. A single row longer than
    the budget still gets its own batch: nothing is dropped. Exact dynamic programme, O(n x max_rows).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ls = [lengths[i] for i in order]
    n = len(ls)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of batching the first j rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, max(-1, j - 1 - max_rows), -1):  # batch = rows i..j-1, padded to ls[j-1]
            rows = j - i
            if rows > 1 and rows * ls[j - 1] > max_tokens:
                break
            c = best[i] + rows * ls[j - 1] + pass_cost
            if c < best[j]:
                best[j], cut[j] = c, i
    out: list[list[int]] = []
    j = n
    while j > 0:
        out.append(order[cut[j]:j])
        j = cut[j]
    return out[::-1]


class Batcher:
    def __init__(self, run: RunFn, max_batch_tokens: int, max_batch_rows: int, max_wait_ms: float,
                 max_queue_rows: int, metrics: Metrics, policy: str = "mixed", max_adapters: int | None = None) -> None:
        self.policy = policy
        self.max_adapters = max_adapters  # adapters one pass may use (the device cache's capacity)
        self.on_idle: Callable[[Callable[[], set[str]]], None] | None = None  # after each round: adapters still needed
        self._round: list[Row] = []  # rows taken from the queue whose pass has not finished
        self.round_rows = 2 * max_batch_rows  # rows one round takes (round-robin over requests)
        self.round_tokens = 2 * max_batch_tokens  # and about this many tokens: two passes
        self.pinned: dict[str, int] = {}  # adapters routed to by requests still being prepared
        self._requests = 0
        self.run, self.max_tokens, self.max_rows = run, max_batch_tokens, max_batch_rows
        self.max_wait, self.max_queue, self.m = max_wait_ms / 1000, max_queue_rows, metrics
        self.queue: deque[Row] = deque()
        self.pool = compute.executor()  # the process's one torch thread (see serving/compute.py)
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    @property
    def queued(self) -> int:
        return len(self.queue)

    def admit(self, rows: int) -> None:
        """Cheap early refusal, before a request is routed and tokenised: under a burst the replica's
        event loop would otherwise spend its time preparing requests that ``submit`` then refuses,
        and the admitted ones would wait behind that work. ``rows`` is a lower bound on the request's
        windows; ``submit`` checks the exact count."""
        if len(self.queue) + rows > self.max_queue:
            self.m.rejected.labels(self.m.replica).inc()
            raise Overloaded(f"{len(self.queue)} windows are queued (limit {self.max_queue})")

    async def submit(self, seqs: list[list[int]], stacks: list[AdapterStack]) -> list[np.ndarray]:
        """Logits (T_i, n_out) per window, once its batch ran."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._loop())
        elif self._worker.get_loop() is not loop:
            raise RuntimeError("this Batcher already serves another event loop (one engine per event loop)")
        self.admit(len(seqs))  # the exact count
        self._requests += 1
        rows = [Row(list(s), st, loop.create_future(), self._requests) for s, st in zip(seqs, stacks, strict=True)]
        self.queue.extend(rows)
        self.m.queue_rows.labels(self.m.replica).set(len(self.queue))
        self._wake.set()
        try:
            return list(await asyncio.gather(*(r.future for r in rows)))
        except asyncio.CancelledError:  # client went away or timed out: release its rows that have not run
            mine = {id(r) for r in rows}
            waiting = sum(1 for r in self.queue if id(r) in mine)
            if waiting:
                self.queue = deque(r for r in self.queue if id(r) not in mine)
                self.m.cancelled.labels(self.m.replica).inc(waiting)
                self.m.queue_rows.labels(self.m.replica).set(len(self.queue))
            for r in rows:
                r.future.cancel()
            raise

    def _take(self) -> list[Row]:
        """This round's rows: round-robin over the queued requests, at most ``round_rows`` rows and about
        two passes of tokens (``2 x max_batch_tokens``). A request with 1 000 windows then shares each
        round with the others, and a new small request waits at most for the round in progress."""
        budget = self.round_tokens
        by: dict[int, deque[Row]] = {}
        for r in self.queue:
            by.setdefault(r.request, deque()).append(r)
        out: list[Row] = []
        tokens = 0
        while len(out) < min(self.round_rows, len(self.queue)) and (not out or tokens < budget):
            for q in list(by.values()):
                if q and len(out) < self.round_rows and (not out or tokens < budget):
                    r = q.popleft()
                    out.append(r)
                    tokens += len(r.ids)
        taken = {id(r) for r in out}
        self.queue = deque(r for r in self.queue if id(r) not in taken)
        return out

    def adapters_in_use(self) -> set[str]:
        """Adapters that queued rows, or rows of the round now running, still need. Safe on the model
        thread too: each container is copied by one list() call, which the GIL makes atomic."""
        rows = [*list(self.queue), *(r for r in list(self._round) if not r.future.done())]
        return {a for r in rows for a in r.stack.adapters} | {a for a, n in list(self.pinned.items()) if n > 0}

    def repin(self, name: str, kept_as: str) -> None:
        """Rows already queued (or taken, not yet run) for ``name`` use ``kept_as`` instead: the version
        they were admitted with (called on the model thread during a reload; list() copies atomically)."""
        for r in [*list(self.queue), *list(self._round)]:
            if name in r.stack.adapters:
                r.stack = AdapterStack(kept_as if r.stack.language == name else r.stack.language,
                                       kept_as if r.stack.task == name else r.stack.task)

    def pin(self, names) -> None:
        for a in names:
            self.pinned[a] = self.pinned.get(a, 0) + 1

    def unpin(self, names) -> None:
        for a in names:
            self.pinned[a] -= 1
            if not self.pinned[a]:
                del self.pinned[a]

    async def call(self, fn, *args):
        """Run ``fn`` on the model thread, between batches (admin changes, cache inspection)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.queue:
                continue
            # let a batch fill: up to max_wait after the oldest row arrived
            deadline = time.monotonic() + self.max_wait
            while len(self.queue) < self.max_rows and time.monotonic() < deadline:
                await asyncio.sleep(min(0.001, max(0.0, deadline - time.monotonic())))
            take = [r for r in self._take() if not r.future.cancelled()]
            self._round = take
            self.m.queue_rows.labels(self.m.replica).set(len(self.queue))
            with self.m.stage("plan"):
                batches = self._batches(take)
            for rows in batches:
                await self._run_rows(loop, rows)
            self._round = []
            if self.on_idle is not None:  # on the model thread, like every cache operation
                await loop.run_in_executor(self.pool, self.on_idle, self.adapters_in_use)
            if self.queue:
                self._wake.set()

    async def _run_rows(self, loop, rows: list[Row]) -> None:
        """One pass. If it fails and it mixed stacks, each stack's rows run again on their own, so an
        error (a broken adapter, say) reaches only the requests of the stack that caused it."""
        rows = [r for r in rows if not r.future.cancelled()]  # cancelled since this round was taken
        if not rows:
            return
        try:
            out = await loop.run_in_executor(self.pool, self._forward, rows)
        except Exception as e:  # noqa: BLE001 - delivered to the waiting requests it concerns
            by: dict[AdapterStack, list[Row]] = {}
            for r in rows:
                by.setdefault(r.stack, []).append(r)
            if len(by) > 1:
                for group in by.values():
                    await self._run_rows(loop, group)
                return
            for r in rows:
                if not r.future.done():
                    r.future.set_exception(e)
            return
        for r, o in zip(rows, out, strict=True):
            if not r.future.done():
                r.future.set_result(o)

    def _fit_cache(self, batch: list[Row]) -> list[list[Row]]:
        """Split a planned pass whose stacks need more adapters than the device cache holds into
        passes that each fit (rows of one stack stay together)."""
        if self.max_adapters is None:
            return [batch]
        need = {a for r in batch for a in r.stack.adapters}
        if len(need) <= self.max_adapters:
            return [batch]
        by: dict[AdapterStack, list[Row]] = {}
        for r in batch:
            by.setdefault(r.stack, []).append(r)
        out: list[list[Row]] = []
        cur: list[Row] = []
        have: set[str] = set()
        for stack, rows in by.items():
            adds = set(stack.adapters) - have
            if cur and len(have) + len(adds) > self.max_adapters:
                out.append(cur)
                cur, have = [], set()
            cur.extend(rows)
            have |= set(stack.adapters)
        if cur:
            out.append(cur)
        return out

    def _batches(self, take: list[Row]) -> list[list[Row]]:
        """mixed: one length-sorted plan over everything queued (ours). group_by_stack: rows only
        share a pass with rows of the same stack. per_request: each request runs alone (what
        per-request adapter switching does)."""
        if self.policy == "mixed":
            groups = [take]
        else:
            key = (lambda r: r.stack) if self.policy == "group_by_stack" else (lambda r: r.request)
            by: dict = {}
            for r in take:
                by.setdefault(key(r), []).append(r)
            groups = list(by.values())
        return [part for g in groups for idx in plan_batches([len(r.ids) for r in g], self.max_tokens, self.max_rows)
                for part in self._fit_cache([g[i] for i in idx])]

    def _forward(self, rows: list[Row]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        out = self.run([r.ids for r in rows], [r.stack for r in rows])
        rep = self.m.replica
        dt = time.perf_counter() - t0
        self.m.forward_seconds.labels(rep).observe(dt)
        self.m.stage_seconds.labels(rep, "forward").inc(dt)
        self.m.batch_rows.labels(rep).observe(len(rows))
        self.m.tokens.labels(rep).inc(sum(len(r.ids) for r in rows))
        self.m.batch_tokens.labels(rep).observe(len(rows) * max(len(r.ids) for r in rows))
        stacks: dict[str, int] = {}
        for r in rows:
            stacks[str(r.stack)] = stacks.get(str(r.stack), 0) + 1
        self.m.batch_stacks.labels(rep).observe(len(stacks))
        for s, n in stacks.items():
            self.m.stack_rows.labels(rep, s).inc(n)
        return out
