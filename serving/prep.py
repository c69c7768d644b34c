"""Preparing requests for the model: tokenising on one thread shared fairly between requests, and
refusing at once the work that could not finish in time.

The tokenizer must not be used from two threads at once ("Already borrowed"), so one thread does
all tokenising. ``FairPrep`` gives each request its own queue of jobs and takes them round robin:
a request with 64 texts of 20 000 characters is cut into jobs of about ``CHUNK_CHARS`` characters,
and a one-sentence request that arrives meanwhile waits for one job, not for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future

from madx.features import ner_features

from .limits import RequestError
from .text import split_words

CHUNK_CHARS = 4000  # characters per tokenising job: a few ms of work
EXTRAPOLATE_OVER = 1.5  # refuse from an estimate only when it is this far over the limit (exact otherwise)


class _Jobs:
    """Jobs queued per key (a request), taken round robin over the keys; shared by a ``FairPrep`` and
    its thread, which ends once the ``FairPrep`` is gone."""

    def __init__(self) -> None:
        self.queues: OrderedDict[object, deque] = OrderedDict()
        self.cv = threading.Condition()
        self.closed = False

    def put(self, key: object, job) -> None:
        with self.cv:
            self.queues.setdefault(key, deque()).append(job)
            self.cv.notify()

    def next(self):
        with self.cv:
            while not self.queues and not self.closed:
                self.cv.wait()
            if self.closed:
                return None
            key, q = next(iter(self.queues.items()))
            job = q.popleft()
            del self.queues[key]
            if q:  # the key's turn is over: to the back of the line
                self.queues[key] = q
            return job

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify_all()


def _work(jobs: _Jobs) -> None:
    while (job := jobs.next()) is not None:
        fut, fn, args = job
        job = None
        if fut.set_running_or_notify_cancel():  # else its request was cancelled meanwhile
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - delivered to the request
                fut.set_exception(e)
        del fut, fn, args  # a finished job keeps nothing alive (its engine, its request's texts)


class FairPrep:
    """One worker thread for the jobs of many requests, in fair turns (``_Jobs``)."""

    def __init__(self, name: str = "madx-prep") -> None:
        self._jobs = _Jobs()
        threading.Thread(target=_work, args=(self._jobs,), name=name, daemon=True).start()
        weakref.finalize(self, self._jobs.close)

    def submit(self, key: object, fn: Callable, *args) -> Future:
        fut: Future = Future()
        self._jobs.put(key, (fut, fn, args))
        return fut

    async def run(self, key: object, fn: Callable, *args):
        return await asyncio.wrap_future(self.submit(key, fn, *args))


def chunks(texts: list[str], size: int = CHUNK_CHARS) -> list[tuple[int, list[str]]]:
    """(index of the first text, texts) runs of about ``size`` characters (a longer text alone)."""
    out: list[tuple[int, list[str]]] = []
    start, cur, n = 0, [], 0
    for i, t in enumerate(texts):
        if cur and n + len(t) > size:
            out.append((start, cur))
            start, cur, n = i, [], 0
        cur.append(t)
        n += len(t)
    if cur:
        out.append((start, cur))
    return out


def ner_prep(tok, window: int, texts: list[str], first: int, pieces: bool, stage=None):
    """On the prep thread: words, windows (``sentence`` counted from the request's first text) and,
    when asked, each window's sub-word strings, for texts ``first``, ``first + 1``, ...
    ``stage(name)`` times each step (Metrics.stage)."""
    stage = stage or (lambda name: contextlib.nullcontext())
    with stage("split_words"):
        words = [split_words(t) for t in texts]
    with stage("tokenise"):
        try:
            feats = ner_features(tok, texts, [[(w.start, w.end) for w in ws] for ws in words], None, window,
                                 skip_empty=True)
        except ValueError as e:  # "sentence i: ..." counts from this chunk's first text
            raise ValueError(re.sub(r"^sentence (\d+)", lambda m: f"sentence {int(m.group(1)) + first}", str(e))) from None
        feats = [dataclasses.replace(f, sentence=f.sentence + first) for f in feats]
        names = [tok.convert_ids_to_tokens(f.input_ids) for f in feats] if pieces else [None] * len(feats)
    return words, feats, names


def time_problem(tokens: int, tokens_per_s: float | None, timeout_s: float) -> str | None:
    """Why ``tokens`` of model work cannot finish within ``timeout_s`` at the measured throughput, in
    one line (None when it can, or before anything was measured)."""
    if tokens_per_s is None or tokens <= tokens_per_s * timeout_s:
        return None
    return (f"the request needs about {tokens} tokens of model work, {tokens / tokens_per_s:.0f} s at the "
            f"{tokens_per_s:.0f} tokens/s this replica computes, over request_timeout_s {timeout_s:g}: "
            f"send fewer or shorter texts per request")


def sample_tokens(tok, texts: list[str], size: int = CHUNK_CHARS) -> tuple[int, int]:
    """(sub-word tokens, characters) of the texts' first ``size`` characters in all, taken text by text
    from the start: the tokenizer alone (a few ms), without word splitting or windows."""
    sample, room = [], size
    for t in texts:
        if room <= 0:
            break
        sample.append(t[:room])
        room -= len(sample[-1])
    ids = tok(sample, add_special_tokens=False)["input_ids"] if sample else []
    return sum(len(x) for x in ids), sum(len(t) for t in sample)


async def prepare_ner(prep: FairPrep, key: object, tok, window: int, texts: list[str], pieces: bool,
                      stacks_per_text: list[int], tokens_per_s: float | None, timeout_s: float, stage=None):
    """Tokenise a request's texts chunk by chunk on ``prep``; stop with a 413 as soon as its counted
    (or, from the chunks so far, clearly estimated) work could not finish in time. A request of more
    than one chunk is first estimated from a sample of its characters, so clearly hopeless work is
    refused before any of it is split into words (one 20 000-character text is ~90 ms of prep work,
    which every other request would wait behind). Returns what ``ner_prep`` returns for all of them."""
    total_chars = sum(len(t) for t in texts) or 1
    if tokens_per_s is not None and total_chars > CHUNK_CHARS:
        n, c = await prep.run(key, sample_tokens, tok, texts)
        work = sum(len(t) * k for t, k in zip(texts, stacks_per_text, strict=True))  # characters x stacks
        estimate = int(n * work / max(c, 1))  # no special tokens, no window overlap: a low estimate
        if time_problem(int(estimate / EXTRAPOLATE_OVER), tokens_per_s, timeout_s):
            raise RequestError(413, time_problem(estimate, tokens_per_s, timeout_s))
    parts = chunks(texts)
    futures = [prep.submit(key, ner_prep, tok, window, part, first, pieces, stage) for first, part in parts]
    words, feats, names = [], [], []
    tokens = chars = 0
    try:
        for fut, (_first, part) in zip(futures, parts, strict=True):
            w, f, n = await asyncio.wrap_future(fut)
            words += w
            feats += f
            names += n
            tokens += sum(len(x.input_ids) * stacks_per_text[x.sentence] for x in f)
            chars += sum(len(t) for t in part)
            estimate = int(tokens * total_chars / max(chars, 1))  # the rest, at this chunk's tokens per char
            problem = time_problem(tokens, tokens_per_s, timeout_s)
            if problem is None and time_problem(int(estimate / EXTRAPOLATE_OVER), tokens_per_s, timeout_s):
                problem = time_problem(estimate, tokens_per_s, timeout_s)
            if problem:
                raise RequestError(413, problem)
    finally:
        for fut in futures:
            fut.cancel()  # what has not run yet (after a 413, an error or a cancelled request)
    return words, feats, names
