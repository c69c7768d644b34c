"""A small Python client for madx-serve.

    from serving.client import MadxClient
    c = MadxClient("http://127.0.0.1:8000")            # api_key="..." when the server has one
    r = c.ner("Angela Merkel visited Nairobi.")
    r["entities"]                                       # [{'text': 'Angela Merkel', 'label': 'PER', ...}, ...]
    r["language"], r["stack"], r["fallback"]            # how the server routed it, and why
    a = c.qa("Where is Nairobi?", "Nairobi is the capital of Kenya.", top_k=2)
    a["answers"][0]["text"], a["stack"]

Every result carries the routing fields of the API (``language``, ``language_source``,
``detection_confidence``, ``stack``, ``fallback``). ``ner_batch`` answers several texts in one
request; ``ner_full`` returns the raw response body. Errors raise ``MadxError`` with the server's
status and message; 503 is retried after the server's Retry-After, up to ``retries`` times.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

ROUTING = ("language", "language_source", "detection_confidence", "stack", "fallback")


class MadxError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class MadxClient:
    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 3, http: httpx.Client | None = None) -> None:
        """``http``: an httpx.Client to send through (tests pass Starlette's TestClient)."""
        self.http = http or httpx.Client(base_url=url, timeout=timeout)
        if api_key:
            self.http.headers["X-API-Key"] = api_key
        self.retries = retries

    def __enter__(self) -> MadxClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        for attempt in range(self.retries + 1):
            r = self.http.request(method, path, json=body)
            if r.status_code == 503 and attempt < self.retries:
                time.sleep(float(r.headers.get("Retry-After", "1")))
                continue
            if r.status_code >= 400:
                try:
                    msg = r.json().get("error", r.text)
                except ValueError:
                    msg = r.text
                raise MadxError(r.status_code, msg)
            return r.json()
        raise AssertionError("unreachable")

    def ner(self, text: str, language: str | None = None, return_tokens: bool = False,
            stack: dict[str, str] | None = None) -> dict[str, Any]:
        """One text -> {'entities': [...], 'language', 'language_source', 'detection_confidence', 'stack',
        'fallback', 'windows'} (+ 'tokens' with ``return_tokens``). ``stack`` names the adapters to run
        instead of the server's route: {'route': 'ensemble:sw+rw'} or {'language_adapter': 'sw',
        'task_adapter': 'ner'}."""
        return self.ner_batch([text], language, return_tokens, stack)[0]

    def ner_batch(self, texts: list[str], language: str | None = None,
                  return_tokens: bool = False, stack: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Several texts in one request; one result per text, in order, each with its own routing."""
        return self.ner_full(texts, language, return_tokens, stack)["results"]

    def ner_full(self, texts: list[str], language: str | None = None, return_tokens: bool = False,
                 stack: dict[str, str] | None = None) -> dict[str, Any]:
        """The raw response body: {'results': [...], 'backbone': ...}."""
        body = {"texts": texts, "language": language, "return_tokens": return_tokens}
        return self._send("POST", "/v1/ner", {**body, "stack": stack} if stack else body)

    def qa(self, question: str, context: str, language: str | None = None, top_k: int = 1,
           max_answer_tokens: int = 30, stack: dict[str, str] | None = None) -> dict[str, Any]:
        """-> {'answers': [{'text', 'start', 'end', 'score'}, ...], 'language', 'language_source',
        'detection_confidence', 'stack', 'fallback', 'windows', 'backbone'}; ``stack`` as for ``ner``."""
        body = {"question": question, "context": context, "language": language, "top_k": top_k,
                "max_answer_tokens": max_answer_tokens}
        return self._send("POST", "/v1/qa", {**body, "stack": stack} if stack else body)

    def adapters(self) -> dict[str, Any]:
        return self._send("GET", "/v1/adapters")
