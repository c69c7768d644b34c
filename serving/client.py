"""A small Python client for madx-serve.

    from serving.client import MadxClient
    c = MadxClient("http://127.0.0.1:8000")            # api_key="..." when the server has one
    c.ner("Angela Merkel visited Nairobi.")             # -> list of entities
    c.qa("Where is Nairobi?", "Nairobi is the capital of Kenya.", top_k=2)

Errors raise ``MadxError`` with the server's status and message; 503 is retried after the
server's Retry-After, up to ``retries`` times.
"""

from __future__ import annotations

import time
from typing import Any

import httpx


class MadxError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class MadxClient:
    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 3) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        self.retries = retries

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(self.retries + 1):
            r = self.http.post(path, json=body)
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

    def ner_full(self, texts: list[str], language: str | None = None, return_tokens: bool = False) -> dict[str, Any]:
        return self._post("/v1/ner", {"texts": texts, "language": language, "return_tokens": return_tokens})

    def ner(self, text: str, language: str | None = None) -> list[dict[str, Any]]:
        return self.ner_full([text], language)["results"][0]["entities"]

    def qa(self, question: str, context: str, language: str | None = None, top_k: int = 1) -> list[dict[str, Any]]:
        return self._post("/v1/qa", {"question": question, "context": context, "language": language,
                                     "top_k": top_k})["answers"]

    def adapters(self) -> dict[str, Any]:
        r = self.http.get("/v1/adapters")
        r.raise_for_status()
        return r.json()
