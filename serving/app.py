"""The HTTP API (FastAPI), independent of Ray: ``build_app(backend, settings, metrics)``.

``backend`` is either ``LocalBackend`` (an in-process Engine: tests, single process) or the Ray
Serve backend in ``deployments.py`` (handles to the backbone and control deployments).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from importlib import resources
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batcher import Overloaded
from .limits import RequestError, check_ner_limits, check_qa_limits
from .metrics import Metrics, merge
from .middleware import (
    DOCS_STATIC,
    MAX_ERRORS,
    ApiKey,
    BodyLimit,
    CancelOnDisconnect,
    CountResponses,
    Guard,
    JsonOnly,
    _err,
    _short,
)
from .schemas import AdaptersResponse, AdminLoad, ErrorBody, NerRequest, NerResponse, QaRequest, QaResponse
from .settings import Settings

log = logging.getLogger("madx.serving")
ENDPOINTS = ["POST /v1/ner", "POST /v1/qa", "GET /v1/adapters", "GET /healthz", "GET /readyz", "GET /metrics",
             "POST /admin/adapters/{name}/load", "DELETE /admin/adapters/{name}", "GET /demo", "GET /docs"]


class Backend(Protocol):
    async def ner(self, texts: list[str], language: str | None, return_tokens: bool, stack: dict | None = None) -> dict: ...
    async def qa(self, question: str, context: str, language: str | None, top_k: int, max_answer_tokens: int,
                 stack: dict | None = None) -> dict: ...
    async def describe(self) -> dict: ...
    async def ready(self) -> bool: ...
    async def admin_load(self, name: str, path: str | None) -> dict: ...
    async def admin_unload(self, name: str) -> dict: ...
    async def metrics_texts(self) -> list[str]: ...


class LocalBackend:
    """One in-process Engine."""

    def __init__(self, engine) -> None:
        self.engine = engine

    async def ner(self, texts, language, return_tokens, stack=None):
        return await self.engine.ner(texts, language, return_tokens, stack)

    async def qa(self, question, context, language, top_k, max_answer_tokens, stack=None):
        return await self.engine.qa(question, context, language, top_k, max_answer_tokens, stack)

    async def describe(self):
        return self.engine.describe()

    async def ready(self):
        return bool(self.engine.ready)

    async def admin_load(self, name, path):
        return await self.engine.admin_load(name, path)

    async def admin_unload(self, name):
        return await self.engine.admin_unload(name)

    async def metrics_texts(self):
        return []  # same process: the ingress registry already holds the engine's metrics


def _checked(check, *check_args, then):
    """Run a limits check at the ingress (before any work is queued), then the backend call."""
    async def run(*args):
        check(*check_args)
        return await then(*args)
    return run


def build_app(backend: Backend, settings: Settings, metrics: Metrics, cancel_on_disconnect: bool = True) -> FastAPI:
    """The API over ``backend``. ``cancel_on_disconnect``: a client that goes away cancels its request
    (off under Ray Serve, which cancels a disconnected request itself)."""
    # ReDoc is off: its page loads a logo from a CDN; Swagger UI at /docs needs nothing from outside
    app = FastAPIOffline(title="madx-serve", version="0.1.0", static_url=DOCS_STATIC, redoc_url=None,
                         description="MAD-X adapters over one frozen multilingual encoder: NER and extractive QA in many "
                                     "languages. Each request row gets its own (language, task) adapter stack; rows of "
                                     "different languages share one forward pass. A person can try it at /demo.")
    demo_html = resources.files("serving").joinpath("static/demo.html").read_text(encoding="utf-8")

    def openapi() -> dict:  # the X-API-Key header as a security scheme: Swagger's "Authorize" then sends it
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
            if settings.api_key:
                schema["security"] = [{"ApiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    retry = {"Retry-After": str(settings.retry_after_s)}

    def observe(endpoint: str, status: int, t0: float, body: dict | None = None, task: str = "-") -> None:
        lang = "-"
        if body:
            r = body["results"][0] if "results" in body and body["results"] else body
            lang = (r.get("stack") or {}).get("language") or "none"
        metrics.request_latency.labels(endpoint, lang, task, str(status)).observe(time.perf_counter() - t0)

    inflight = [0]  # requests of this ingress now waiting on the backbone (one event loop: no lock)
    limit = settings.max_inflight

    async def call(endpoint: str, task: str, fn, *args) -> Any:
        t0 = time.perf_counter()
        if inflight[0] >= limit:  # admission control before any Ray call: a burst gets fast 503s, not 504s
            observe(endpoint, 503, t0, task=task)
            return _err(503, f"server is at capacity ({inflight[0]} requests in flight, ingress_max_inflight "
                             f"{limit}); retry after {settings.retry_after_s} s", headers=retry)
        inflight[0] += 1
        try:
            return await _call(endpoint, task, t0, fn, *args)
        finally:
            inflight[0] -= 1

    async def _call(endpoint: str, task: str, t0: float, fn, *args) -> Any:
        try:
            body = await asyncio.wait_for(fn(*args), settings.request_timeout_s)
        except RequestError as e:
            observe(endpoint, e.status, t0, task=task)
            return _err(e.status, e.message)
        except Overloaded as e:
            observe(endpoint, 503, t0, task=task)
            return _err(503, f"server is at capacity ({e}); retry after {settings.retry_after_s} s", headers=retry)
        except TimeoutError:
            observe(endpoint, 504, t0, task=task)
            return _err(504, f"request did not finish within {settings.request_timeout_s} s (request_timeout_s)")
        except Exception:  # noqa: BLE001 - logged with an id, never sent to the client
            rid = uuid.uuid4().hex[:12]
            log.exception("internal error %s on %s", rid, endpoint)
            observe(endpoint, 500, t0, task=task)
            return _err(500, f"internal error (id {rid}); the server log has the details")
        # our own dicts, serialised once: returning a Response skips FastAPI's second validation of the
        # body against response_model (the schema stays in the OpenAPI document; the schemathesis and
        # contract tests check that responses conform to it)
        with metrics.stage("serialise"):
            resp = JSONResponse(body) if isinstance(body, dict) else body
        observe(endpoint, 200, t0, body, task)
        return resp

    @app.post("/v1/ner", response_model=NerResponse, responses={413: {"model": ErrorBody}, 422: {"model": ErrorBody},
                                                                503: {"model": ErrorBody}})
    async def ner(req: NerRequest):
        """Named entities with character offsets into the original text (word-level aggregation)."""
        return await call("ner", "ner", _checked(check_ner_limits, settings.limits, req.all_texts, then=backend.ner),
                          req.all_texts, req.language, req.return_tokens, req.requested_stack())

    @app.post("/v1/qa", response_model=QaResponse, responses={413: {"model": ErrorBody}, 422: {"model": ErrorBody},
                                                              503: {"model": ErrorBody}})
    async def qa(req: QaRequest):
        """Extractive answers; long contexts are read in overlapping windows (nothing is truncated)."""
        check = _checked(check_qa_limits, settings.limits, req.question, req.context, req.top_k, then=backend.qa)
        return await call("qa", "qa", check, req.question, req.context, req.language, req.top_k, req.max_answer_tokens,
                          req.requested_stack())

    @app.get("/v1/adapters", response_model=AdaptersResponse)
    async def adapters():
        return await backend.describe()

    @app.get("/demo", response_class=HTMLResponse, include_in_schema=False)
    async def demo():
        """A page for people: entities highlighted in the text, answers in the context, the route of each."""
        return HTMLResponse(demo_html)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        try:
            ok = await backend.ready()
        except Exception:  # noqa: BLE001
            ok = False
        if not ok:
            return _err(503, "backbone replicas are not ready", headers=retry)
        return {"status": "ready"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prom():
        texts = [metrics.text(), *await backend.metrics_texts()]
        return PlainTextResponse(merge(texts), media_type="text/plain; version=0.0.4")

    @app.post("/admin/adapters/{name}/load")
    async def admin_load(name: str, body: AdminLoad | None = None):
        """Serve an adapter (from the store, or from an artifact directory) without a restart."""
        return await call("admin", "-", backend.admin_load, name, body.path if body else None)

    @app.delete("/admin/adapters/{name}")
    async def admin_unload(name: str):
        return await call("admin", "-", backend.admin_unload, name)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            e = errs[0]
            return _err(400, f"malformed JSON: {e.get('ctx', {}).get('error', e.get('msg'))}")
        detail = [{"field": _short(".".join(str(x) for x in e["loc"] if x != "body") or "body"),
                   "rule": _short(e["msg"], 300), "got": _short(e.get("input"))} for e in errs[:MAX_ERRORS]]
        first = detail[0]
        more = f"; {len(errs) - MAX_ERRORS} more errors not listed" if len(errs) > MAX_ERRORS else ""
        return _err(422, f"invalid request: {first['field']}: {first['rule']} (got {first['got']!r}){more}", detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return _err(404, f"no endpoint {request.method} {_short(request.url.path, 80)}; endpoints: "
                             f"{', '.join(e for e in ENDPOINTS if '/admin/' not in e)}")
        if exc.status_code == 405:
            return _err(405, f"method {request.method} is not allowed on {request.url.path}")
        return _err(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        rid = uuid.uuid4().hex[:12]
        log.exception("internal error %s", rid)
        return _err(500, f"internal error (id {rid}); the server log has the details")

    key = settings.api_key.get_secret_value() if settings.api_key else None
    # the last added runs first: count, guard, the key (before any body is read), the body limit, JSON only
    if cancel_on_disconnect:
        app.add_middleware(CancelOnDisconnect)
    app.add_middleware(JsonOnly)
    app.add_middleware(BodyLimit, limit=settings.limits.max_body_bytes, timeout_s=settings.limits.read_timeout_s)
    app.add_middleware(ApiKey, key=key)
    app.add_middleware(Guard, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(CountResponses, metrics=metrics)
    return app

