"""HTTP request/response models (OpenAPI at /docs). Unknown fields are rejected."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def _surrogate(v: object) -> tuple[int, str] | None:
    """(index, character) of the first lone surrogate in a string (or a list of strings), else None.
    A lone surrogate is not Unicode text: it cannot be UTF-8 encoded, tokenised or echoed."""
    for s in v if isinstance(v, list) else [v]:
        if isinstance(s, str):
            try:  # UTF-8 refuses exactly the surrogates, at C speed (a Python loop took 70 ms per MB)
                s.encode("utf-8")
            except UnicodeEncodeError as e:
                return e.start, s[e.start]
    return None


MAX_LIST_ITEMS = 10_000  # items of any list in a request (limits.max_texts is at most this)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: object) -> object:
        if isinstance(data, dict):
            for name, v in data.items():
                if isinstance(v, list):  # one error, not one per item (every list of a request holds strings)
                    if len(v) > MAX_LIST_ITEMS:
                        raise ValueError(f"'{name}' has {len(v)} items; a request may hold at most {MAX_LIST_ITEMS}")
                    bad = next((i for i, x in enumerate(v) if not isinstance(x, str)), None)
                    if bad is not None:
                        raise ValueError(f"'{name}' item {bad} is {type(v[bad]).__name__}, not a string; "
                                         f"'{name}' is a list of strings")
                hit = _surrogate(v)
                if hit is not None:
                    raise ValueError(f"'{name}' contains a lone surrogate U+{ord(hit[1]):04X} at index {hit[0]}; "
                                     f"text must be valid Unicode (send well-formed UTF-8 / JSON escapes)")
        return data


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


NAME = r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$"


class StackRequest(_In):
    """The adapter stack a request asks for, instead of the route the server would choose."""
    route: str | None = Field(None, max_length=140, pattern=r"^(task_only|madx|english|related:[A-Za-z0-9_-]{1,64}|"
                              r"ensemble:[A-Za-z0-9_-]{1,64}(\+[A-Za-z0-9_-]{1,64})+)(@[A-Za-z0-9_][A-Za-z0-9_-]{0,63})?$",
                              description="task_only, madx, english, related:<code> or ensemble:<a>+<b> (a member "
                              "may be 'none': the task adapter without a language adapter), optionally @<task "
                              "adapter> to run it over that task adapter ('madx@ner-en')")
    language_adapter: str | None = Field(None, pattern=NAME, description="a served language adapter (omit: none)")
    task_adapter: str | None = Field(None, pattern=NAME, description="a served task adapter of this task "
                                     "(omit: the task's own)")

    @model_validator(mode="after")
    def _something(self) -> StackRequest:
        if self.route is None and self.language_adapter is None and self.task_adapter is None:
            raise ValueError("stack names nothing; give route, or language_adapter and/or task_adapter")
        return self


STACK = Field(None, description="run this adapter stack instead of the route the server chooses (reported back "
              "as route 'requested'); 422 lists what is served when it names anything else")


LANG = Field(None, min_length=1, max_length=16, pattern=r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$",
             description="ISO 639 code (e.g. 'sw'); omitted: detected, and reported in the response")


class NerRequest(_In):
    text: str | None = Field(None, description="one text; or use `texts`")
    texts: list[str] | None = Field(None, description="several texts, answered in order")
    language: str | None = LANG
    stack: StackRequest | None = STACK
    return_tokens: bool = Field(False, description="also return each sub-word token with its label and offsets")

    @model_validator(mode="after")
    def _one_of(self) -> NerRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        if self.texts is not None and not self.texts:
            raise ValueError("'texts' is empty; give at least one text")
        for i, t in enumerate(self.all_texts):
            if not t.strip():
                raise ValueError(f"text {i} is empty or only whitespace")
        return self

    def requested_stack(self) -> dict | None:
        return self.stack.model_dump(exclude_none=True) if self.stack else None

    @property
    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class QaRequest(_In):
    question: str = Field(..., min_length=1)
    context: str = Field(..., min_length=1)
    language: str | None = LANG
    stack: StackRequest | None = STACK
    top_k: int = Field(1, ge=1, description="answers to return, best first")
    max_answer_tokens: int = Field(30, ge=1, le=512)

    @model_validator(mode="after")
    def _not_blank(self) -> QaRequest:
        for name in ("question", "context"):
            if not getattr(self, name).strip():
                raise ValueError(f"'{name}' is only whitespace")
        return self

    def requested_stack(self) -> dict | None:
        return self.stack.model_dump(exclude_none=True) if self.stack else None


class StackOut(_Out):
    language: str | None = Field(description="language adapter used (null: task adapter only)")
    task: str


class Routing(_Out):
    language: str | None = Field(description="the request's language: given, or detected")
    language_source: Literal["request", "detected", "undetermined"]
    detection_confidence: float | None = None
    stack: StackOut
    fallback: str | None = Field(None, description="why the stack differs from the language: 'related:<lang>', 'task_only' "
                                                     "(no adapter for the language), or 'task_only:trained_alone' (the "
                                                     "task adapter was trained without a language adapter)")
    route: str = Field(description="task_only | madx | english | related:<code> | ensemble:<a>+<b>, maybe "
                       "@<task adapter>; 'requested' for a stack the request named")
    route_reason: str = Field(description="why this route: measured evidence, an override, or a fallback rule")
    stacks: list[StackOut] | None = Field(None, description="an ensemble's stacks (each row ran once per stack, "
                                                            "outputs averaged); null for a single stack")


class EntityOut(_Out):
    text: str = Field(description="== input[start:end]")
    label: str
    start: int = Field(description="Unicode code point offset into the original text")
    end: int = Field(description="exclusive")
    score: float


class TokenOut(_Out):
    token: str = Field(description="the sub-word piece (bare '▁' pieces carry no characters and are not listed)")
    label: str = Field(description="this piece's own label; a word's label is that of its first piece")
    start: int = Field(description="the characters this piece carries: Unicode code point offsets")
    end: int = Field(description="exclusive")
    text: str = Field(description="== input[start:end]")
    score: float


class NerResult(Routing):
    entities: list[EntityOut]
    tokens: list[TokenOut] | None = None
    windows: int = Field(description="model windows the text needed (long texts use several, nothing is cut)")


class NerResponse(_Out):
    results: list[NerResult]
    backbone: str


class AnswerOut(_Out):
    text: str = Field(description="== context[start:end]")
    start: int
    end: int
    score: float


class QaResponse(Routing):
    answers: list[AnswerOut]
    windows: int
    backbone: str


class AdapterInfo(_Out):
    name: str
    kind: str
    task_type: str | None = None
    language: str | None = None
    resident: bool
    source: str


class AdaptersResponse(_Out):
    backbone: str
    languages: list[str]
    tasks: dict[str, str]
    tasks_alone: dict[str, str] = Field(description="task -> the task adapter trained alone that the task_only "
                                        "route runs (a task missing here: task_only runs tasks.<task> bare)")
    adapters: list[AdapterInfo]
    fallback: dict
    detector_languages: list[str]
    routing: dict = Field(description="per language and task, the measured score of every route; the default "
                                      "for languages without evidence; overrides")
    windows: dict[str, int]
    device: str
    threads: int
    backbone_dtype: str = Field(description="fp32 | bf16 | fp16 | int8 (settings.backbone_dtype after auto)")
    adapter_kernel: str = Field(description="auto | runs | gathered (batching.adapter_kernel)")


class AdminLoad(_In):
    path: str | None = Field(None, description="artifact directory (default: the store entry of that name)")


class ErrorBody(_Out):
    error: str
    detail: str | list | None = None
