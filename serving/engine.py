"""The serving core, without Ray: routing, tokenisation, windows, batching, decoding.

One ``Engine`` owns one frozen backbone, its adapter cache and its batcher. The Ray Serve backbone
deployment is a thin wrapper around it; tests drive it directly.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import numpy as np
import torch

from madx.artifacts import ArtifactError, read_manifest
from madx.backbone import load_backbone
from madx.config import AdapterStack
from madx.decode import best_spans, softmax, word_predictions
from madx.features import pad, qa_windows
from madx.langid import Detector, load_profiles, profiles_of
from madx.language_codes import LanguageCodeError, canonical
from madx.model import MadxModel
from madx.precision import set_backbone_dtype, slow_precision

from . import compute
from .batcher import Batcher
from .cache import AdapterCache
from .limits import RequestError, check_ner_limits, check_qa_limits
from .metrics import Metrics
from .prep import FairPrep, prepare_ner, time_problem
from .requested import requested_stacks
from .routing import Route, RouteError, choose, keyed_by_code, split_adapter
from .settings import Settings
from .text import clusters, entities_from_words, visible_span

log = logging.getLogger("madx.serving")
# admin names: no '.' (a torch module name), no '~' (a reload's kept version), nothing invisible
ADAPTER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch sees no CUDA device")
    return torch.device(name)


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics | None = None, backbone=None) -> None:
        self.s = settings
        self.m = metrics or Metrics()
        # all torch work (load, dequantise, forward) on the one compute thread: serving/compute.py
        compute.run_sync(self._load_model, backbone)
        served_tasks = {t: n for t, n in settings.tasks.items() if n in self.cache.served("task")}
        if not served_tasks:
            raise ArtifactError(f"none of the task adapters {settings.tasks} is served by {settings.adapter_store}; "
                                f"store has: {sorted(self.cache.entries)}; refused: {self.cache.refused}")
        for t, name in served_tasks.items():
            want = self.cache.entries[name].task_type
            if want != t:
                raise ArtifactError(f"tasks.{t} = {name!r} is a {want!r} adapter, not {t!r}")
        # the task_only route's adapters: trained alone, for a task that is served
        self.alone = {t: n for t, n in settings.tasks_alone.items() if t in served_tasks and n in self.cache.entries}
        for t, name in self.alone.items():
            e = self.cache.entries[name]
            if e.task_type != t:
                raise ArtifactError(f"tasks_alone.{t} = {name!r} is a {e.task_type!r} adapter, not {t!r}")
            if not e.trained_alone:
                raise ArtifactError(f"tasks_alone.{t} = {name!r} was trained on top of a language adapter; the "
                                    f"task_only route needs a task adapter trained without one")
        try:  # measured route scores, under the codes requests are routed with
            self.routing = keyed_by_code(read_manifest(settings.adapter_store).get("routing") or {}, self._code_of)
        except RouteError as e:
            raise ArtifactError(str(e)) from None
        self._refresh_detector()
        b = settings.batching
        # windows never exceed the backbone's positions (smaller windows, never truncated input)
        self.ner_window = min(b.ner_window, self.model.max_positions)
        self.qa_window = min(b.qa_window, self.model.max_positions)
        self.qa_stride = min(b.qa_stride, self.qa_window // 3)
        self.batcher = Batcher(self._run, b.max_batch_tokens, b.max_batch_rows, b.max_wait_ms, b.max_queue_rows, self.m,
                               b.policy, max_adapters=settings.cache.max_device_adapters, max_pass_ms=b.max_pass_ms)
        first = self.alone.get(next(iter(served_tasks))) or next(iter(served_tasks.values()))
        self.batcher.calibrate(AdapterStack(None, first), self.pad_id, length=min(256, self.ner_window))
        self.batcher.on_idle = self.cache.collect  # unloaded adapters leave once no queued row needs them
        self.cache.repin = self.batcher.repin  # rows admitted before a reload keep the version they were routed to
        self._prep = FairPrep()  # tokenising, off the event loop, shared fairly between requests (serving/prep.py)
        self._admin_locks: dict[int, asyncio.Lock] = {}  # one per event loop (tests run several)
        self.ready = True

    def _load_model(self, backbone) -> None:
        settings = self.s
        if settings.threads:
            torch.set_num_threads(settings.threads)  # OpenMP's thread count is per thread: set it here
        bb = backbone or load_backbone(settings.backbone)
        if bb.tokenizer is None:
            raise RuntimeError(f"backbone {settings.backbone!r} has no tokenizer and cannot serve text")
        self.tok = bb.tokenizer  # used on the prep thread only (serving/prep.py)
        self.pad_id = bb.tokenizer.pad_token_id
        self.threads = torch.get_num_threads()  # the compute thread's (a per-thread OpenMP setting)
        self.device = pick_device(settings.device)
        self.model = MadxModel(bb.model, bb.name).to(self.device).eval()
        self.model.adapter_kernel = settings.batching.adapter_kernel
        slow = None if settings.allow_slow_precision else slow_precision(settings.backbone_dtype, self.device)
        if slow:
            raise RuntimeError(f"{slow} (or set allow_slow_precision)")
        try:
            set_backbone_dtype(self.model, settings.backbone_dtype, settings.adapter_dtype)
        except ValueError as e:
            raise RuntimeError(f"backbone_dtype: {e}") from None
        self.cache = AdapterCache(self.model, settings.adapter_store, settings.cache.max_device_adapters,
                                  settings.cache.max_cpu_adapters, self.m, tuple(settings.admin_roots))

    # ------------------------------------------------------------------ what is served
    def languages(self) -> list[str]:
        return sorted(self.cache.served("language"))

    def describe(self) -> dict[str, Any]:
        return {
            "backbone": self.model.backbone_name,
            "languages": self.languages(),
            "tasks": {t: n for t, n in self.s.tasks.items() if n in self.cache.entries},
            "tasks_alone": dict(self.alone),
            "adapters": [{"name": e.name, "kind": e.kind, "task_type": e.task_type, "language": e.language,
                          "resident": self.cache.resident(e.name), "source": e.source}
                         for e in self.cache.entries.values()],
            "fallback": {"mode": self.s.fallback.mode, "related": self.s.fallback.related,
                         "refused_adapters": {n: self._public(m) for n, m in self.cache.refused.items()}},
            "detector_languages": self.detector.languages,
            "routing": {"evidence": self.routing.get("evidence") or {}, "default": self.routing.get("default") or {},
                        "overrides": dict(self.s.routing.overrides), "source_language": self.s.routing.source_language},
            "windows": {"ner": self.ner_window, "qa": self.qa_window, "qa_stride": self.qa_stride},
            "device": str(self.device),
            "backbone_dtype": self.model.backbone_dtype,
            "adapter_kernel": self.model.adapter_kernel,
            "threads": self.threads,
        }

    def _public(self, message: str) -> str:
        """A message for a public endpoint: file system paths are given relative to the store."""
        for root in sorted({str(self.s.adapter_store.resolve()), str(self.s.adapter_store)}, key=len, reverse=True):
            message = message.replace(root, "<store>")
        return message

    def _check_admin(self, entry, cfg) -> None:
        """What startup checks for a store, for an admin load: a configured task gets a task adapter
        of that task type; any other name is a language adapter, or a task adapter of a served task
        (which requests and routes name: ``madx@ner-en``) under a name no language adapter has."""
        key, task = next(((k, t) for k in ("tasks", "tasks_alone") for t, n in getattr(self.s, k).items()
                          if n == entry.name), (None, None))
        if task is not None and (cfg.kind != "task" or cfg.head.task_type != task):
            got = cfg.kind if cfg.kind != "task" else f"{cfg.head.task_type} task"
            raise ArtifactError(f"{key}.{task} is {entry.name!r}: it needs a {task} task adapter, this artifact is a "
                                f"{got} adapter")
        if task is None and cfg.kind != "language":
            now = self.cache.entries.get(entry.name)
            if now is not None and now.kind == "language":
                raise ArtifactError(f"{entry.name!r} is a served language adapter; a {cfg.head.task_type} task adapter "
                                    f"cannot take its name")
            if cfg.head.task_type not in self.s.tasks:
                raise ArtifactError(f"{entry.name!r} is a {cfg.head.task_type} task adapter, but that task is not served "
                                    f"(tasks: {self.s.tasks})")

    # ------------------------------------------------------------------ routing
    def route(self, task: str, language: str | None, text: str, requested: dict | None = None) -> Route:
        """The stacks a text runs: the client's ``requested`` stack if given (serving/requested.py), else
        the store's evidence, else the fallback rules."""
        name = self.s.tasks.get(task)
        if name is None or name not in self.cache.entries:
            raise RequestError(404, f"task {task!r} is not served; served tasks: {sorted(self.describe()['tasks'])}")
        served = set(self.languages())
        alone = self.alone.get(task, name)  # the task_only route's task adapter
        source, conf = "request", None
        if language is None:
            lang, conf = self.detector.detect(text)
            conf = round(conf, 4)
            if lang is None or conf < self.s.fallback.min_detect_confidence:
                language, source = None, "undetermined"
            else:
                language, source = lang, "detected"
        else:
            language = self._language_code(language)
        if requested:
            stacks, reason = requested_stacks(task, requested, language, served, self._task_adapters(task), name,
                                              self.alone.get(task, name), self.s.routing.source_language)
            self.m.requested.labels(self.m.replica, task, requested.get("route") or "explicit").inc()
            return Route(stacks[0], language, source, conf, None, "requested", reason, stacks)
        mode = self.s.fallback.mode
        if mode == "strict" and language not in served:
            what = (f"language {language!r} has no adapter" if language else
                    "the language could not be detected (give 'language')")
            raise RequestError(422, f"{what}; fallback policy is strict; served languages: {sorted(served)}")
        try:
            choice = choose(task, language, served, self.routing, self.s.routing.source_language,
                            self.s.routing.overrides, adapter=name, alone=alone, task_adapters=self._task_adapters(task))
        except RouteError as e:
            raise RequestError(422, f"routing.overrides: {e}") from None
        if choice is not None:
            fallback = None if split_adapter(choice.route)[0] == "madx" else choice.route
            return Route(choice.stacks[0], language, source, conf, fallback, choice.route, choice.reason, choice.stacks)
        # a store without routing evidence: the rules that came before it
        if self.cache.entries[name].trained_alone:
            # no language adapter under a task adapter that was trained without one
            return Route(AdapterStack(None, name), language, source, conf, "task_only:trained_alone", "task_only",
                         "the task adapter was trained without a language adapter")
        if language in served:
            return Route(AdapterStack(language, name), language, source, conf, None, "madx",
                         "the language's own adapter")
        base = language.split("-")[0] if language else None
        if mode != "strict" and language is not None:
            for cand in (base, self.s.fallback.related.get(language), self.s.fallback.related.get(base or "")):
                if cand in served:
                    return Route(AdapterStack(cand, name), language, source, conf, f"related:{cand}", f"related:{cand}",
                                 f"no adapter for {language!r}; {cand!r} is related (fallback.related)")
        why = f"no adapter for {language!r}" if language else "the language was not determined"
        return Route(AdapterStack(None, alone), language, source, conf, "task_only", "task_only", why)

    def _task_adapters(self, task: str) -> set[str]:
        return {n for n, e in self.cache.entries.items() if e.kind == "task" and e.task_type == task}

    def _code_of(self, tag: str) -> str:
        """``_language_code`` for stored names: a ValueError (not a request's 422) for a non-code."""
        try:
            return self._language_code(tag)
        except RequestError as e:
            raise ValueError(str(e)) from None

    def _language_code(self, tag: str) -> str:
        """A served adapter's own name as given (e.g. 'pt-br'), else the canonical code: ISO 639-1/2/3,
        BCP-47 and macrolanguages folded (swa, swh, sw-KE -> sw; quy, quz -> qu), madx.language_codes."""
        raw = tag.lower().replace("_", "-")
        if raw in self.cache.served("language"):
            return raw
        try:
            return canonical(raw)
        except LanguageCodeError as e:
            raise RequestError(422, str(e)) from None

    # ------------------------------------------------------------------ model thread
    def _run(self, seqs: list[list[int]], stacks: list[AdapterStack]) -> list[np.ndarray]:
        self.cache.ensure({a for s in stacks for a in s.adapters})
        ids = pad(seqs, self.pad_id).to(self.device)
        lens = torch.tensor([len(s) for s in seqs], device=self.device)
        mask = (torch.arange(ids.shape[1], device=self.device)[None, :] < lens[:, None]).long()
        with torch.inference_mode():
            _, logits = self.model(ids, mask, stacks)
        # numpy out: decoding on the event loop must not run torch ops (serving/compute.py)
        return [lg[:n].float().cpu().numpy() for lg, n in zip(logits, lens.tolist(), strict=True)]

    async def _forward(self, seqs: list[list[int]], routes: list[Route]) -> list[np.ndarray]:
        """Logits per sequence under its route. An ensemble route runs the sequence once per stack, all
        in the same batches as everything else, and averages the logits."""
        flat_ids, flat_stacks, owner = [], [], []
        for i, (ids, r) in enumerate(zip(seqs, routes, strict=True)):
            for st in r.all_stacks:
                flat_ids.append(ids)
                flat_stacks.append(st)
                owner.append(i)
        self._admit_windows(len(flat_ids))  # the exact count (x an ensemble's stacks), before anything is queued
        out = await self.batcher.submit(flat_ids, flat_stacks) if flat_ids else []
        if len(out) == len(seqs):
            return out
        grouped: list[list[np.ndarray]] = [[] for _ in seqs]
        for i, lg in zip(owner, out, strict=True):
            grouped[i].append(lg)
        return [g[0] if len(g) == 1 else np.mean(g, axis=0) for g in grouped]

    # ------------------------------------------------------------------ NER
    async def ner(self, texts: list[str], language: str | None, return_tokens: bool = False,
                  stack: dict | None = None) -> dict[str, Any]:
        check_ner_limits(self.s.limits, texts)
        self.batcher.admit(1)  # a full queue refuses before detection and tokenisation
        with self.m.stage("detect"):
            routes = [self.route("ner", language, t, stack) for t in texts]
        pinned = [a for r in routes for st in r.all_stacks for a in st.adapters]
        self.batcher.pin(pinned)  # an unload while this request is prepared waits for it (drain)
        labels = self.cache.entries[routes[0].stack.task].labels  # the version routed to (a reload may follow)
        try:
            return await self._ner(texts, routes, return_tokens, labels)
        finally:
            self._unpin(pinned)

    async def _ner(self, texts: list[str], routes: list[Route], return_tokens: bool, labels) -> dict[str, Any]:
        try:  # tokenising 64 x 20 000 characters takes seconds: off the event loop, in fair turns
            words, feats, pieces = await prepare_ner(self._prep, object(), self.tok, self.ner_window, texts,
                                                     return_tokens, [len(r.all_stacks) for r in routes],
                                                     self.batcher.speed.tokens_per_s, self.s.request_timeout_s,
                                                     self.m.stage)
        except ValueError as e:  # a single "word" longer than a window (e.g. 300 chars without spaces)
            raise RequestError(422, f"text {str(e).removeprefix('sentence ')}; split it or raise batching.ner_window") from None
        logits = await self._forward([f.input_ids for f in feats], [routes[f.sentence] for f in feats])
        with self.m.stage("decode"):
            return self._ner_decode(texts, routes, words, feats, pieces, logits, return_tokens, labels)

    def _ner_decode(self, texts, routes, words, feats, pieces, logits, return_tokens: bool, labels) -> dict[str, Any]:
        per_text: list[dict[int, tuple[int, float]]] = [{} for _ in texts]
        windows = [0] * len(texts)
        tokens: list[list[dict]] = [[] for _ in texts]
        for fi, (f, lg) in enumerate(zip(feats, logits, strict=True)):
            per_text[f.sentence].update(word_predictions(f.word_ids, lg))
            windows[f.sentence] += 1
            if return_tokens:
                tokens[f.sentence].extend(self._tokens(f, pieces[fi], lg, texts[f.sentence], labels))
        results = []
        for i, t in enumerate(texts):
            preds = per_text[i]
            tags = [labels[preds[w][0]] if w in preds else "O" for w in range(len(words[i]))]
            scores = [preds[w][1] if w in preds else 1.0 for w in range(len(words[i]))]
            ents = entities_from_words(t, words[i], tags, scores)
            results.append({**routes[i].out(), "entities": [e.__dict__ for e in ents],
                            "tokens": tokens[i] if return_tokens else None, "windows": windows[i]})
        return {"results": results, "backbone": self.model.backbone_name}

    def _unpin(self, names: list[str]) -> None:
        self.batcher.unpin(names)
        if self.cache.retired:  # this request may have been the last one a draining adapter waited for
            asyncio.ensure_future(self.batcher.call(self.cache.collect, self.batcher.adapters_in_use))

    def _admit_windows(self, n: int) -> None:
        """Refuse a request over limits.max_windows before any of its windows is queued."""
        lim = self.s.limits.max_windows
        if n > lim:
            raise RequestError(413, f"the request needs {n} model windows; the limit is {lim} (limits.max_windows): "
                                    f"send fewer or shorter texts per request")

    def _tokens(self, f, pieces: list[str], lg: np.ndarray, text: str, labels) -> list[dict]:
        """Each sub-word that carries characters, with its own label and its own character span
        (bare ``▁`` pieces carry none and are left out)."""
        probs = softmax(lg)  # numpy: no torch on the event loop thread (serving/compute.py)
        p, best = probs.max(-1), probs.argmax(-1)
        out = []
        for t, span in enumerate(f.spans):
            if span is None:
                continue
            out.append({"token": pieces[t], "label": labels[int(best[t])],
                        "start": span[0], "end": span[1], "text": text[span[0]:span[1]],
                        "score": round(float(p[t]), 4)})
        return out

    # ------------------------------------------------------------------ QA
    async def qa(self, question: str, context: str, language: str | None, top_k: int = 1,
                 max_answer_tokens: int = 30, stack: dict | None = None) -> dict[str, Any]:
        check_qa_limits(self.s.limits, question, context, top_k)
        self.batcher.admit(1)
        with self.m.stage("detect"):
            route = self.route("qa", language, context, stack)
        pinned = [a for st in route.all_stacks for a in st.adapters]
        self.batcher.pin(pinned)
        try:
            return await self._qa(question, context, route, top_k, max_answer_tokens)
        finally:
            self._unpin(pinned)

    async def _qa(self, question: str, context: str, route: Route, top_k: int, max_answer_tokens: int) -> dict[str, Any]:
        def prep():  # one hop to the prep thread (every tokenizer use happens there)
            with self.m.stage("tokenise"):
                q_tokens = len(self.tok(question, add_special_tokens=False)["input_ids"])
                room = self.qa_window - q_tokens - 4  # context tokens per window (4 special tokens)
                if room < 32:
                    raise RequestError(422, f"question has {q_tokens} tokens; with a {self.qa_window}-token window it "
                                            f"must stay under {self.qa_window - 36} tokens so that each window keeps 32 "
                                            f"context tokens")
                # the overlap adapts to the question: at most half of a window's context, so a long question
                # never turns a context into hundreds of windows that move 17 tokens at a time
                return qa_windows(self.tok, question, context, self.qa_window, min(self.qa_stride, room // 2))

        wins = await self._prep.run(object(), prep)
        if not any(o is not None for w in wins for o in w.offsets):
            raise RequestError(422, "the context has no visible characters the model can read (only spaces, "
                                    "invisible format characters or characters the tokenizer drops)")
        problem = time_problem(sum(len(w.input_ids) for w in wins) * len(route.all_stacks),
                               self.batcher.speed.tokens_per_s, self.s.request_timeout_s)
        if problem:
            raise RequestError(413, problem)
        logits = await self._forward([w.input_ids for w in wins], [route] * len(wins))
        with self.m.stage("decode"):
            return self._qa_decode(context, route, wins, logits, top_k, max_answer_tokens)

    def _qa_decode(self, context: str, route: Route, wins, logits, top_k: int, max_answer_tokens: int) -> dict[str, Any]:
        spans = best_spans([w.offsets for w in wins], [lg[:, 0] for lg in logits], [lg[:, 1] for lg in logits],
                           top_k=top_k, max_answer_tokens=max_answer_tokens)
        bounds, answers, seen = clusters(context), [], set()
        for s in spans:  # on grapheme-cluster boundaries, without clusters that show nothing at the ends
            span = visible_span(context, s.start, s.end, bounds)
            if span is not None and span not in seen:
                seen.add(span)
                answers.append({"text": context[span[0]:span[1]], "start": span[0], "end": span[1],
                                "score": round(s.score, 4)})
        return {**route.out(), "answers": answers, "windows": len(wins), "backbone": self.model.backbone_name}

    # ------------------------------------------------------------------ admin (on the model thread)
    def _admin_lock(self) -> asyncio.Lock:
        return self._admin_locks.setdefault(id(asyncio.get_running_loop()), asyncio.Lock())

    @staticmethod
    def _check_name(name: str) -> None:
        if not ADAPTER_NAME.fullmatch(name):
            shown = repr(name[:40]) + (f" ({len(name)} characters)" if len(name) > 40 else "")
            raise RequestError(422, f"adapter name {shown} is not valid: adapter names are 1-64 characters of ASCII "
                                    "letters, digits, '_' and '-', not starting with '-'")

    async def admin_load(self, name: str, path: str | None) -> dict[str, Any]:
        self._check_name(name)
        async with self._admin_lock():  # one admin operation at a time: each checks the state it changes
            try:
                e = await self.batcher.call(self.cache.admin_load, name, path, self._check_admin)
            except KeyError as err:
                raise RequestError(404, err.args[0]) from None
            except ArtifactError as err:
                raise RequestError(422, self._public(str(err))) from None
            self._refresh_detector()
            return {"loaded": name, "kind": e.kind, "source": e.source}

    async def admin_unload(self, name: str) -> dict[str, Any]:
        self._check_name(name)
        async with self._admin_lock():
            runs = [f"tasks.{t}" for t, n in self.s.tasks.items() if n == name]
            runs += [f"tasks_alone.{t} (the task_only route)" for t, n in self.alone.items() if n == name]
            if runs and name in self.cache.entries:
                raise RequestError(409, f"adapter {name!r} is {' and '.join(runs)}: unloading it would leave that "
                                        f"without its adapter; reload it instead (POST /admin/adapters/{name}/load, "
                                        "with a path for other weights)")
            try:
                await self.batcher.call(self.cache.admin_unload, name, False, True)
                # rows admitted before keep it until they ran; nothing queued needs it: it goes now
                await self.batcher.call(self.cache.collect, self.batcher.adapters_in_use)
            except KeyError as err:
                raise RequestError(404, err.args[0]) from None
            self._refresh_detector()
            return {"unloaded": name}

    def _refresh_detector(self) -> None:
        """Rebuild the detector for the languages with a served adapter or with routing evidence (one
        served task_only by its evidence must still be recognised: Pidgin, not English). After an admin
        op has been applied, a profile file that cannot be read keeps the previous detector (logged)."""
        keep = set(self.languages()) | set(self.routing.get("evidence") or {})
        try:
            self.detector = Detector(profiles_of(load_profiles(self.s.adapter_store), keep, self._code_of))
        except (OSError, ValueError) as e:
            if not hasattr(self, "detector"):
                raise ArtifactError(f"language profiles of {self.s.adapter_store}: {e}") from None
            log.warning("language profiles could not be re-read (%s); keeping the previous detector", e)

