"""Request limits checked before any work: a request over a limit gets its 413 (or 422) at once,
with the limit and the setting that holds it in the message."""

from __future__ import annotations

from .settings import Limits


class RequestError(Exception):
    """A client error: HTTP ``status`` with a message quoting the bad value and the rule."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_ner_limits(lim: Limits, texts: list[str]) -> None:
    if len(texts) > lim.max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request; the limit is {lim.max_texts} (limits.max_texts)")
    for i, t in enumerate(texts):
        if len(t) > lim.max_chars:
            raise RequestError(413, f"text {i} has {len(t)} characters; the limit is {lim.max_chars} (limits.max_chars)")


def check_qa_limits(lim: Limits, question: str, context: str, top_k: int) -> None:
    if len(context) > lim.max_chars:
        raise RequestError(413, f"context has {len(context)} characters; the limit is {lim.max_chars} (limits.max_chars)")
    if len(question) > lim.max_question_chars:
        raise RequestError(413, f"question has {len(question)} characters; the limit is {lim.max_question_chars} "
                                f"(limits.max_question_chars)")
    if top_k > lim.max_top_k:
        raise RequestError(422, f"top_k {top_k} is above the limit {lim.max_top_k} (limits.max_top_k)")
