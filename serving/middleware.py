"""Pure ASGI middlewares of the HTTP API, outermost first: count every response, security headers and
the Host check, the API key (from the headers, before any body is read), the body's size and the
time to send it, JSON only. Each answers with the API's error body (``_err``)."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from fastapi.responses import JSONResponse

from .metrics import Metrics
from .schemas import ErrorBody

DOCS_STATIC = "/static/docs"  # Swagger UI files from the installed fastapi-offline package (no CDN)
# Pages that hold no data and that a browser opens without headers: public even when an API key is set.
# The demo page asks for the key and sends it with every API call it makes.
PUBLIC = ("/demo", "/docs", "/docs/oauth2-redirect", "/openapi.json")


def _err(status: int, error: str, detail: Any = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(error=error, detail=detail).model_dump(), status_code=status, headers=headers)


def _short(v: Any, n: int = 80) -> Any:
    """A JSON-safe, shortened echo of a client's value: strings, ints, bools and None as they are
    when short; anything else (bytes, NaN, infinities, nested values) and long values as a cut repr;
    lone surrogates escaped (they cannot be encoded)."""
    if isinstance(v, str):
        v = v.encode("utf-8", "backslashreplace").decode("utf-8")
        return v if len(v) <= n else v[:n] + "..."
    if v is None or isinstance(v, bool | int) and len(str(v)) <= n:
        return v
    s = repr(v).encode("utf-8", "backslashreplace").decode("utf-8")
    return s if len(s) <= n else s[:n] + "..."


JSON_TYPES = (b"application/json",)
MAX_ERRORS = 20  # validation errors listed in one 422 (the body stays small whatever was sent)


class JsonOnly:
    """Pure ASGI middleware: a POST to the API must send JSON. Any other or a missing content type
    gets 415 before anything parses the body (FastAPI would otherwise validate raw bytes)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith(("/v1/", "/admin/")):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        has_body = headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers
        if ctype in JSON_TYPES or (not ctype and not has_body and scope["path"].startswith("/admin/")):
            return await self.app(scope, receive, send)
        got = ctype.decode("latin-1") or "none"
        return await _err(415, f"content type {_short(got)!r} is not supported; send the body as JSON with "
                               f"'Content-Type: application/json'")(scope, receive, send)


class BodyLimit:
    """Pure ASGI middleware: refuse bodies over ``limit`` bytes before anything parses them, and bodies
    that do not arrive within ``timeout_s`` of the request's headers (a client trickling its body
    would hold a connection for ever): 408 with ``Connection: close``. Content-Length is checked
    first; the body is then read here (at most ``limit`` + one chunk) and replayed to the app."""

    def __init__(self, app, limit: int, timeout_s: float) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        cl = headers.get(b"content-length")
        too_large = _err(413, f"request body is over the limit of {self.limit} bytes (limits.max_body_bytes)")
        if cl is not None and cl.isdigit() and int(cl) > self.limit:
            return await too_large(scope, receive, send)
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while True:
            try:
                m = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                return await _err(408, f"the request body did not arrive within {self.timeout_s:g} s "
                                       f"(limits.read_timeout_s); {size} bytes came",
                                  headers={"Connection": "close"})(scope, receive, send)
            if m["type"] != "http.request":
                break
            chunks.append(m.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await too_large(scope, receive, send)
            if not m.get("more_body"):
                break
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class CountResponses:
    """Pure ASGI middleware, outermost: every response is counted in ``madx_requests_total`` by
    endpoint and status, whoever answered it (a middleware's 401/413/415, a validation 422, an error
    raised while serialising), so the dashboard's error share is the clients' error share. A request
    whose client disconnected before any answer is counted as 499."""

    ENDPOINTS = {"/v1/ner": "ner", "/v1/qa": "qa"}

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = self.ENDPOINTS.get(path) or ("admin" if path.startswith("/admin/") else "other")
        status = []

        async def counted(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)
        try:
            await self.app(scope, receive, counted)
        except Exception:
            if not status:  # Starlette's outermost handler turns it into a 500 after this middleware
                status.append(500)
            raise
        finally:  # no response and no error: the client went away first (499, as nginx counts it)
            self.metrics.requests.labels(endpoint, str(status[0] if status else 499)).inc()


class Guard:
    """Pure ASGI middleware: security headers on every response (nosniff; on pages also a CSP that
    allows only this origin, no framing, no referrer), and, with ``allowed_hosts``, a 400 for any
    other Host header (a page on another site cannot reach a keyless server on localhost by DNS
    rebinding)."""

    PAGE = [(b"content-security-policy", b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
             b"'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
             b"form-action 'self'"), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]

    def __init__(self, app, allowed_hosts: list[str] | None) -> None:
        self.app = app
        self.hosts = None if allowed_hosts is None else {h.lower().strip("[]") for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def secured(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                headers.append((b"x-content-type-options", b"nosniff"))
                if any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers):
                    headers += self.PAGE
                message = {**message, "headers": headers}
            await send(message)
        if self.hosts is not None:
            raw = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if raw.startswith("["):  # [v6 address] or [v6 address]:port
                name = raw[1:raw.index("]")] if "]" in raw else raw
            else:  # name or name:port
                name = raw.rsplit(":", 1)[0] if raw.count(":") == 1 else raw
            if name.lower() not in self.hosts:
                return await _err(400, f"Host {_short(raw, 60)!r} is not served here (allowed_hosts: "
                                       f"{sorted(self.hosts)})")(scope, receive, secured)
        return await self.app(scope, receive, secured)


class ApiKey:
    """Pure ASGI middleware: with an API key configured, every path needs ``X-API-Key``
    (constant-time compare). Admin paths need it always (403 when no key is configured)."""

    def __init__(self, app, key: str | None) -> None:
        self.app, self.key = app, key.encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        admin = scope["path"].startswith("/admin")
        if scope["path"] in PUBLIC or scope["path"].startswith(DOCS_STATIC + "/"):
            return await self.app(scope, receive, send)
        if self.key is None:
            if admin:
                return await _err(403, "admin endpoints are disabled: no API key is configured (set MADX_API_KEY)")(
                    scope, receive, send)
            return await self.app(scope, receive, send)
        got = dict(scope.get("headers") or []).get(b"x-api-key", b"")
        if not hmac.compare_digest(got, self.key):
            return await _err(401, "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "ApiKey"})(
                scope, receive, send)
        return await self.app(scope, receive, send)


class CancelOnDisconnect:
    """Pure ASGI middleware, innermost (single-process mode): a client that disconnects cancels its
    request, so its queued windows leave the batcher instead of being computed for no one (Ray Serve
    does the same in Ray mode). Runs after ``BodyLimit``, which hands the app the whole body in one
    message; from then on only this middleware reads the connection, and the app sees the disconnect
    when it asks."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        first = await receive()
        if first["type"] != "http.request" or first.get("more_body"):
            pending = [first]

            async def passthrough():
                return pending.pop() if pending else await receive()
            return await self.app(scope, passthrough, send)
        gone = asyncio.Event()
        given = []

        async def app_receive():
            if not given:
                given.append(1)
                return first
            await gone.wait()
            return {"type": "http.disconnect"}

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
        task = asyncio.ensure_future(self.app(scope, app_receive, send))
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not task.done():  # the client is gone (or this call was cancelled): stop its work
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        if not task.cancelled():
            task.result()  # the app's own error, if it raised one
