"""Token-budget dynamic batching across requests, languages and tasks.

Requests put their windows (token id lists, each with its own adapter stack) in one queue. A
single worker takes one pass's worth of it at a time (waiting at most ``max_wait_ms`` for more),
by fair queueing over requests by tokens: every request waiting gets the same share of each pass,
so a small request goes in the next pass whole while a big one is spread over many, and no request
starves. A pass holds at most ``max_batch_tokens`` padded tokens and ``max_batch_rows``
rows, and at most about ``max_pass_ms`` of work at the throughput measured so far, so a request
arriving during a big one waits about one short pass; one pass mixes any stacks. The model runs on the process's one compute
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


class Throughput:
    """Padded tokens per second of full forward passes, an exponential moving average (None before the
    first). A pass counts when it holds at least ``full`` tokens, or half the current pass budget if that
    is less. A one-sentence pass is mostly fixed cost (about 30 tokens/s here, against 8 000 for full
    passes), so averaging small passes in made every big request look too slow to finish (a 413) and
    shrank the passes that the measured rate sizes. Relative to the budget, a slow machine still
    measures: passes settle at about rate x max_pass_ms, minus the fixed cost."""

    def __init__(self, weight: float = 0.2, full: int = 512) -> None:
        self.weight, self.full, self.tokens_per_s = weight, full, None

    def add(self, tokens: int, seconds: float, budget: int | None = None) -> None:
        """One pass of ``tokens`` padded tokens took ``seconds``; ``budget``: the pass size allowed then."""
        if tokens <= 0 or seconds <= 0 or tokens < min(self.full, (budget or 2 * self.full) // 2):
            return
        rate = tokens / seconds
        self.tokens_per_s = rate if self.tokens_per_s is None else (
            (1 - self.weight) * self.tokens_per_s + self.weight * rate)

    def tokens_in(self, seconds: float, default: int) -> int:
        return default if self.tokens_per_s is None else int(self.tokens_per_s * seconds)


class Batcher:
    def __init__(self, run: RunFn, max_batch_tokens: int, max_batch_rows: int, max_wait_ms: float,
                 max_queue_rows: int, metrics: Metrics, policy: str = "mixed", max_adapters: int | None = None,
                 max_pass_ms: float | None = None) -> None:
        self.policy = policy
        self.max_pass_s = None if max_pass_ms is None else max_pass_ms / 1000
        self.speed = Throughput()
        self._served: dict[int, int] = {}  # fair queueing: tokens taken so far by each waiting request
        self.max_adapters = max_adapters  # adapters one pass may use (the device cache's capacity)
        self.on_idle: Callable[[Callable[[], set[str]]], None] | None = None  # after each round: adapters still needed
        self._round: list[Row] = []  # rows taken from the queue whose pass has not finished
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

    def pass_tokens(self) -> int:
        """Padded tokens one pass may hold: ``max_batch_tokens``, and no more than about ``max_pass_ms``
        of work at the measured throughput (never under 64 tokens, so a pass always makes progress)."""
        if self.max_pass_s is None:
            return self.max_tokens
        return max(64, min(self.max_tokens, self.speed.tokens_in(self.max_pass_s, self.max_tokens)))

    def calibrate(self, stack: AdapterStack, token_id: int, rows: int = 4, length: int = 256) -> None:
        """Two full passes (``rows`` x ``length`` tokens of ``stack``) before the first request, outside the
        metrics: they warm the kernels, and the second gives pass sizes and the early 413 a measured rate."""
        for _ in range(2):
            t0 = time.perf_counter()
            compute.run_sync(self.run, [[token_id] * length] * rows, [stack] * rows)
        self.speed.add(rows * length, time.perf_counter() - t0)

    def _take(self) -> list[Row]:
        """The next pass's rows, by fair queueing over the queued requests by tokens: the next row is
        always the oldest waiting row of the request that has had the fewest tokens computed so far
        (a new request starts level with the least served one). Waiting requests share every pass by
        tokens, a new small request goes in the next pass, and none starves: when the least-served
        request's next row does not fit the pass, the pass ends and that row opens the next one."""
        budget = self.pass_tokens()
        by: dict[int, deque[Row]] = {}
        for r in self.queue:
            by.setdefault(r.request, deque()).append(r)
        self._served = {k: v for k, v in self._served.items() if k in by}
        floor = min(self._served.values(), default=0)
        for k in by:
            self._served.setdefault(k, floor)
        out: list[Row] = []
        tokens = 0
        while len(out) < self.max_rows:
            live = [k for k, q in by.items() if q]
            if not live:
                break
            k = min(live, key=self._served.__getitem__)  # ties: the earliest request
            n = len(by[k][0].ids)
            if out and tokens + n > budget:
                break
            out.append(by[k].popleft())  # (the first row of a pass goes in whatever its length)
            tokens += n
            self._served[k] += n
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
        self.speed.add(len(rows) * max(len(r.ids) for r in rows), dt, self.pass_tokens())
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
