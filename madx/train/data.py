"""Readers for the trainer's data: CoNLL-style NER, SQuAD-style QA, plain text.

Every reader fails with ``DataError`` naming the file and line: ``path:line: what is wrong``.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LANG_PREFIX = re.compile(r"^[a-z]{2,3}:(?=.)")  # WikiANN (Rahimi) tokens look like "sw:Nairobi"
TAG = re.compile(r"^(O|[BI]-[A-Za-z_]+)$")


class DataError(ValueError):
    """A data file is missing or malformed; the message starts with ``path:line``."""


@dataclass(frozen=True)
class Sentence:
    tokens: tuple[str, ...]
    tags: tuple[str, ...]


@dataclass
class NerFile:
    sentences: list[Sentence]
    labels: tuple[str, ...]  # O first, then B-/I- pairs sorted by type
    skipped_empty_tokens: int = 0  # lines with a tag but no token (e.g. MasakhaNER 2.0 xho)


def _open(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    return p


def read_conll(path: str | Path, strip_lang_prefix: bool = True) -> NerFile:
    """Token in the first column, IOB2 tag in the last; tab or space separated; blank lines
    separate sentences; ``-DOCSTART-`` lines are skipped."""
    p = _open(path)
    sents: list[Sentence] = []
    toks: list[str] = []
    tags: list[str] = []
    skipped = 0

    def flush() -> None:
        if toks:
            sents.append(Sentence(tuple(toks), tuple(tags)))
            toks.clear()
            tags.clear()

    with open(p, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():
                flush()
                continue
            if line.startswith("-DOCSTART-"):
                continue
            cols = line.split("\t") if "\t" in line else line.split()
            if len(cols) < 2:
                if line[:1].isspace() and len(cols) == 1 and TAG.match(cols[0]):
                    skipped += 1  # a tag with an empty token
                    continue
                raise DataError(f"{p}:{lineno}: expected a token and a tag column, got {line!r}")
            token, tag = cols[0].strip(), cols[-1].strip()
            if not TAG.match(tag):
                raise DataError(f"{p}:{lineno}: tag {tag!r} is not IOB2 (O, B-TYPE or I-TYPE)")
            if strip_lang_prefix:
                token = LANG_PREFIX.sub("", token)
            if not token:
                skipped += 1
                continue
            toks.append(token)
            tags.append(tag)
    flush()
    if not sents:
        raise DataError(f"{p}:1: no sentences found")
    types = sorted({t[2:] for s in sents for t in s.tags if t != "O"})
    labels = ("O", *[f"{bi}-{t}" for t in types for bi in "BI"])
    return NerFile(sents, labels, skipped)


@dataclass(frozen=True)
class QAExample:
    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...] = field(default=())  # (text, char start)


def read_ner_files(paths: Sequence[str | Path], labels: tuple[str, ...], drop: Sequence[str] = ()) -> NerFile:
    """NER files merged into one; tags of a dropped type (e.g. DATE, which the labels lack) become O."""
    sents = [Sentence(s.tokens, tuple("O" if t != "O" and t[2:] in drop else t for t in s.tags))
             for p in paths for s in read_conll(p).sentences]
    return NerFile(sents, labels)


def read_squad(path: str | Path) -> list[QAExample]:
    """SQuAD v1.1-format JSON (SQuAD, XQuAD, MLQA, TyDiQA-GoldP). Duplicate ids are re-keyed
    ``id#2``, ``id#3`` ... (TyDiQA-GoldP train reuses small integers)."""
    p = _open(path)
    if p.suffix == ".zip":  # SQuAD dev ships zipped: exactly one .json member
        with zipfile.ZipFile(p) as z:
            members = [n for n in z.namelist() if n.endswith(".json")]
            if len(members) != 1:
                raise DataError(f"{p}:1: expected one .json member in the zip, found {members}")
            text = z.read(members[0]).decode("utf-8")
    else:
        text = p.read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{p}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{p}:1: expected a SQuAD object with a 'data' list")
    out: list[QAExample] = []
    seen: dict[str, int] = {}
    for ai, art in enumerate(doc["data"]):
        for pi, para in enumerate(art.get("paragraphs", [])):
            ctx = para.get("context")
            if not isinstance(ctx, str):
                raise DataError(f"{p}:{_line_of(text, 'context')}: data[{ai}].paragraphs[{pi}] has no context")
            for qa in para.get("qas", []):
                qid = str(qa.get("id", ""))
                if not qid or not isinstance(qa.get("question"), str):
                    raise DataError(f"{p}:{_line_of(text, qid or 'question')}: question without id or text "
                                    f"in data[{ai}].paragraphs[{pi}]")
                answers = []
                for a in qa.get("answers", []):
                    start, atext = a.get("answer_start"), a.get("text")
                    if not isinstance(start, int) or not isinstance(atext, str) or ctx[start:start + len(atext)] != atext:
                        raise DataError(f"{p}:{_line_of(text, qid)}: answer {atext!r} of question {qid!r} "
                                        f"is not at context[{start}:]")
                    answers.append((atext, start))
                n = seen.get(qid, 0) + 1
                seen[qid] = n
                out.append(QAExample(qid if n == 1 else f"{qid}#{n}", qa["question"], ctx, tuple(answers)))
    return out


def _line_of(text: str, needle: str) -> int:
    """Best-effort line number of the first occurrence of ``needle`` (for error messages)."""
    i = text.find(f'"{needle}"') if needle else -1
    return text.count("\n", 0, i) + 1 if i >= 0 else 1


def normalise_sentence(s: str) -> str:
    return re.sub(r"\W+", " ", s.casefold()).strip()


SEG = re.compile(r"<seg[^>]*>(.*?)</seg>", re.S)


def read_text(path: str | Path, exclude: set[str] | None = None, min_chars: int = 1) -> list[str]:
    """Plain text, one sentence or paragraph per line; ``id<TAB>sentence`` lines (BUCC) keep the
    last column; ``.xml`` files (CES Bible corpus) yield their ``<seg>`` elements. Lines whose
    normalised form is in ``exclude`` (e.g. evaluation test sentences) are dropped, so MLM never
    sees test text."""
    p = _open(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if p.suffix == ".xml":
        lines = [html.unescape(m.group(1)) for m in SEG.finditer(raw)]
        if not lines:
            raise DataError(f"{p}:1: XML file without <seg> elements")
    else:
        lines = [ln.rsplit("\t", 1)[-1] for ln in raw.splitlines()]
    out = []
    for line in lines:
        s = " ".join(line.split())
        if len(s) >= min_chars and not (exclude and normalise_sentence(s) in exclude):
            out.append(s)
    return out


def file_provenance(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        b = Path(p).read_bytes()
        out.append({"path": str(p), "bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()})
    return out


def lang_paths(items: Sequence[str], what: str) -> list[tuple[str, Path]]:
    """``LANG=PATH`` arguments as (language, path) pairs, in order; a malformed one names the option."""
    out = []
    for it in items:
        lang, sep, path = it.partition("=")
        if not sep or not lang or not path:
            raise SystemExit(f"{what} {it!r} must look like LANG=PATH")
        out.append((lang, Path(path)))
    return out
