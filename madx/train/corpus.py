"""Which unlabelled text trains each language, and which evaluation text it must never contain.

One table for every offline job that reads raw text: the MLM head, the language adapters and the
language-identification benchmark. Paths are relative to the shared data root (``../shared/data``,
see its PROVENANCE.md). Each language's lines are cut once, by a hash of the normalised line, into
``train`` and ``heldout``; held-out lines measure MLM loss and language identification and never
train anything. Lines that occur in an evaluation file (NER dev/test sentences, QA dev/test
contexts) are dropped from both, and no MT *test* split is read at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .data import normalise_sentence, read_conll, read_squad, read_text

# Languages XLM-R (and so multilingual-e5) saw in pre-training (CC-100), among those this project
# trains or evaluates: the table below, and XQuAD's.
PRETRAINED = frozenset({"en", "sw", "am", "ha", "xh", "my", "zh", "ja", "is", "jv", "ar",
                        "de", "el", "es", "hi", "ro", "ru", "th", "tr", "vi"})

W, M1, M2 = "ner/wikiann_xtreme_panx", "ner/masakhaner1", "ner/masakhaner2"
U, L = "unlabelled", "unlabelled/lafand_mt_text_files"
MT = "unlabelled/masakhane_ner_text_by_language"


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1 where one exists, else 639-3
    name: str
    text: tuple[str, ...]  # unlabelled text files (plain, BUCC tsv, CES xml, or SQuAD json contexts)
    ner_eval: tuple[str, ...] = ()  # CoNLL files whose sentences must not be trained on
    qa_eval: tuple[str, ...] = ()  # SQuAD files whose contexts must not be trained on
    min_chars: int = 20

    @property
    def pretrained(self) -> bool:
        return self.code in PRETRAINED


def _m(iso3: str, m2: bool = True, m1: bool = True) -> tuple[str, ...]:
    return ((f"{M1}/{iso3}/dev.txt", f"{M1}/{iso3}/test.txt") if m1 else ()) + \
        ((f"{M2}/{iso3}/dev.txt", f"{M2}/{iso3}/test.txt") if m2 else ())


def _w(code: str) -> tuple[str, ...]:
    return (f"{W}/dev-{code}.tsv", f"{W}/test-{code}.tsv")


def _lafand(pair: str, iso3: str, train: bool = True) -> tuple[str, ...]:
    return ((f"{L}/{pair}/train.{iso3}",) if train else ()) + (f"{L}/{pair}/dev.{iso3}",)


LANGUAGES: tuple[Language, ...] = (
    Language("en", "English", ("qa/tydiqa_goldp_xtreme/train/tydiqa.goldp.en.train.json",),
             _w("en") + ("ner/conll2003_en/dev.txt", "ner/conll2003_en/test.txt"),
             ("qa/xquad/xquad.en.json", "qa/tydiqa_goldp_xtreme/dev/tydiqa.goldp.en.dev.json",
              "qa/squad_v1.1/dev-v1.1.json.zip", "qa/mlqa_v1_dev/dev-context-en-question-en.json")),
    Language("sw", "Swahili", (f"{MT}/swahili/voa_clean_final.txt", *_lafand("en-swa", "swa"),
                               f"{U}/bible_corpus/Swahili-NT.xml"),
             _w("sw") + _m("swa"), ("qa/tydiqa_goldp_xtreme/dev/tydiqa.goldp.sw.dev.json",)),
    Language("yo", "Yoruba", (f"{MT}/yoruba/yoruba.txt", *_lafand("en-yor", "yor")), _w("yo") + _m("yor")),
    Language("rw", "Kinyarwanda", (f"{MT}/kinyarwanda/kinyarwanda.txt", *_lafand("en-kin", "kin", train=False)),
             _w("rw") + _m("kin")),
    Language("ha", "Hausa", (f"{MT}/hausa/hausa.txt", *_lafand("en-hau", "hau")), _m("hau")),
    Language("ig", "Igbo", (f"{MT}/igbo/igbo_data10000.txt", *_lafand("en-ibo", "ibo")), _m("ibo")),
    Language("lg", "Luganda", (f"{MT}/luganda/luganda.txt", *_lafand("en-lug", "lug")), _m("lug")),
    Language("luo", "Dholuo", (f"{MT}/luo/LUO.txt", *_lafand("en_luo", "luo")), _m("luo")),
    Language("pcm", "Nigerian Pidgin", (f"{MT}/naija_pidgin/pidgin_ner_7000.txt", *_lafand("en-pcm", "pcm")),
             _m("pcm")),
    Language("wo", "Wolof", (f"{MT}/wolof/sentences.txt", *_lafand("fr-wol", "wol")), _m("wol")),
    Language("am", "Amharic", (f"{MT}/amharic/amharic_news.txt", *_lafand("en-amh", "amh", train=False)),
             _m("amh", m2=False)),
    Language("tn", "Setswana", (f"{MT}/setswana/setswana.txt", *_lafand("en-tsn", "tsn")), _m("tsn", m1=False)),
    Language("sn", "Shona", (f"{MT}/shona/shona_10k.txt", *_lafand("en-sna", "sna", train=False)),
             _m("sna", m1=False)),
    Language("zu", "Zulu", _lafand("en-zul", "zul"), _m("zul", m1=False)),
    Language("xh", "Xhosa", _lafand("en-xho", "xho", train=False), _m("xho", m1=False)),
    Language("ny", "Chichewa", _lafand("en-nya", "nya", train=False), _m("nya", m1=False)),
    Language("tw", "Twi", _lafand("en-twi", "twi"), _m("twi", m1=False)),
    Language("bm", "Bambara", _lafand("fr-bam", "bam"), _m("bam", m1=False)),
    Language("ee", "Ewe", _lafand("fr-ewe", "ewe"), _m("ewe", m1=False)),
    Language("fon", "Fon", _lafand("fr-fon", "fon"), _m("fon", m1=False)),
    Language("mos", "Mossi", _lafand("fr-mos", "mos"), _m("mos", m1=False)),
    Language("bbj", "Ghomala", _lafand("fr-bbj", "bbj"), _m("bbj", m1=False)),
    Language("qu", "Quechua", (f"{U}/americasnlp2021/quechua-spanish/dev.quy", f"{U}/bible_corpus/Quichua-NT.xml"),
             _w("qu"), min_chars=10),
    Language("my", "Burmese", (f"{U}/my_myPOS/mypos-dver.0.9.word.txt",), _w("my")),
    Language("zh", "Chinese", (f"{U}/bucc2018_xtreme/zh-en.dev.zh", f"{U}/laser_tatoeba_v1/tatoeba.cmn-eng.cmn"),
             _w("zh"), ("qa/xquad/xquad.zh.json", "qa/mlqa_v1_dev/dev-context-zh-question-zh.json"), min_chars=8),
    Language("ja", "Japanese", (f"{U}/laser_tatoeba_v1/tatoeba.jpn-eng.jpn",), _w("ja"), min_chars=8),
    Language("is", "Icelandic", (f"{U}/laser_tatoeba_v1/tatoeba.isl-eng.isl",), _w("is"), min_chars=5),
    Language("jv", "Javanese", (f"{U}/laser_tatoeba_v1/tatoeba.jav-eng.jav",), _w("jv"), min_chars=5),
    Language("ar", "Arabic", (f"{U}/laser_tatoeba_v1/tatoeba.ara-eng.ara",), _w("ar"),
             ("qa/xquad/xquad.ar.json", "qa/tydiqa_goldp_xtreme/dev/tydiqa.goldp.ar.dev.json",
              "qa/mlqa_v1_dev/dev-context-ar-question-ar.json"), min_chars=8),
    Language("gn", "Guarani", (f"{U}/americasnlp2021/guarani-spanish/train.gn",
                               f"{U}/americasnlp2021/guarani-spanish/dev.gn")),
    Language("mi", "Maori", (f"{U}/mi_wikipedia/mi-wp-min-500-text-only.txt",)),
    Language("ilo", "Ilocano", (f"{U}/ilo_iloELECTRA/Encyclopedic(2911)/Wikipedia(508).txt",
                                f"{U}/ilo_iloELECTRA/News(706)/News(556).txt",
                                f"{U}/ilo_iloELECTRA/Religion(25065)/Bible(25065).txt")),
    Language("tk", "Turkmen", (f"{U}/laser_tatoeba_v1/tatoeba.tuk-eng.tuk",), min_chars=5),
    Language("mhr", "Meadow Mari", (f"{U}/laser_tatoeba_v1/tatoeba.mhr-eng.mhr",), min_chars=5),
)
BY_CODE = {lang.code: lang for lang in LANGUAGES}


def heldout(line: str, percent: int = 5) -> bool:
    """The fixed held-out cut: ``percent`` of lines by a hash of their normalised form."""
    h = hashlib.blake2b(normalise_sentence(line).encode(), digest_size=4).digest()
    return int.from_bytes(h, "big") % 100 < percent


def default_root() -> Path:
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def _eval_sentences(lang: Language, root: Path) -> set[str]:
    out: set[str] = set()
    for f in lang.ner_eval:
        if (root / f).exists():
            out |= {normalise_sentence(" ".join(s.tokens)) for s in read_conll(root / f).sentences}
    for f in lang.qa_eval:
        if (root / f).exists():
            out |= {normalise_sentence(q.context) for q in read_squad(root / f)}
    return out


def _read(path: Path, min_chars: int, exclude: set[str]) -> list[str]:
    if path.suffix == ".json":
        ctx = dict.fromkeys(" ".join(q.context.split()) for q in read_squad(path))
        return [c for c in ctx if len(c) >= min_chars and normalise_sentence(c) not in exclude]
    return read_text(path, exclude, min_chars=min_chars)


@dataclass(frozen=True)
class Split:
    code: str
    train: tuple[str, ...]
    heldout: tuple[str, ...]
    dropped_eval: int  # lines dropped because an evaluation file contains them


def load(code: str, root: Path | None = None) -> Split:
    """A language's deduplicated lines, cut into train and held-out, evaluation text removed."""
    lang = BY_CODE[code]
    root = Path(root) if root else default_root()
    exclude = _eval_sentences(lang, root)
    seen: dict[str, None] = {}
    dropped = 0
    for f in lang.text:
        kept = _read(root / f, lang.min_chars, exclude)
        dropped += len(_read(root / f, lang.min_chars, set())) - len(kept) if exclude else 0
        seen.update(dict.fromkeys(kept))
    lines = list(seen)
    return Split(code, tuple(x for x in lines if not heldout(x)), tuple(x for x in lines if heldout(x)), dropped)


def available(root: Path | None = None) -> list[str]:
    root = Path(root) if root else default_root()
    return [lang.code for lang in LANGUAGES if all((root / f).exists() for f in lang.text)]


def sample(lines: Iterable[str], n: int, seed: int = 0) -> list[str]:
    """A deterministic sample of ``n`` lines (all of them when there are fewer)."""
    import random

    lines = list(lines)
    if len(lines) <= n:
        return lines
    return random.Random(seed).sample(lines, n)


# Closest related language among this table's (same branch of the family, or shared contact language);
# the routing evidence tries its adapter ("related:<code>") and an ensemble with it.
RELATED = {
    "sw": "rw", "rw": "lg", "lg": "rw", "sn": "zu", "zu": "xh", "xh": "zu", "ny": "sn", "tn": "zu",
    "yo": "ig", "ig": "yo", "ha": "yo", "pcm": "en", "luo": "sw", "wo": "bm", "bm": "wo", "tw": "ee",
    "ee": "fon", "fon": "ee", "mos": "bm", "bbj": "yo", "am": "ar", "qu": "gn", "gn": "qu", "my": "zh",
    "zh": "ja", "ja": "zh", "is": "en", "jv": "ilo", "ilo": "jv", "mi": "ilo", "ar": "am", "tk": "mhr", "mhr": "tk",
    "en": "is",
}
NER_DEV = {c: f"{W}/dev-{c}.tsv" for c in ("en", "sw", "yo", "rw", "qu", "my", "zh", "ja", "is", "jv", "ar")}
NER_DEV.update({c: f"{M2}/{iso3}/dev.txt" for c, iso3 in (
    ("ha", "hau"), ("ig", "ibo"), ("lg", "lug"), ("luo", "luo"), ("pcm", "pcm"), ("wo", "wol"), ("tn", "tsn"),
    ("sn", "sna"), ("zu", "zul"), ("xh", "xho"), ("ny", "nya"), ("tw", "twi"), ("bm", "bam"), ("ee", "ewe"),
    ("fon", "fon"), ("mos", "mos"), ("bbj", "bbj"))})
NER_DEV["am"] = f"{M1}/amh/dev.txt"
# QA dev data with answers: TyDiQA-GoldP *dev* here has its answers stripped, and the shipped QA
# adapter never trained on TyDiQA sw *train*: the half of its contexts with heldout(context, 50) is
# Swahili's QA dev set, the other half a test set.
QA_DEV = {"sw": "qa/tydiqa_goldp_xtreme/train/tydiqa.goldp.sw.train.json"}
