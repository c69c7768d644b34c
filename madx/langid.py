"""Language identification: CLD2 for the ~160 languages it names, n-gram profiles for the rest.

The library is Google's Compact Language Detector 2 through ``pycld2`` (model compiled into the
wheel: no download). It was chosen by the numbers in docs/LID.md (``scripts/lid_benchmark.py``):
on held-out sentences of 40 languages it named the most of ours (31 of 40) and was the most accurate
overall and on short texts, and the fastest, against fastText lid.176 (lite), lingua and langid.py.

Served languages CLD2 cannot name (Nigerian Pidgin, Twi, Fon, Ghomala, ...) are covered by the
store's character n-gram profiles (1- to 3-grams of each language adapter's training text, naive
Bayes with a floor for unseen n-grams). The two are combined so that each decides only what it can
judge: the profiles pick among the served languages they know; their answer is taken only when it is
a language CLD2 cannot name *and* CLD2's own answer is one the profiles weighed too (or CLD2 has no
answer), and over a reliable CLD2 answer only with a posterior of at least 0.999. So German stays
``de`` (no profile competes with it), while Pidgin, which CLD2 calls English, becomes ``pcm`` when
the store has a ``pcm`` profile and it beats the ``en`` profile by that much.

Codes are canonical (``madx.language_codes``): ISO 639-1 where one exists, else ISO 639-3.
Profiles live in ``<store>/_langid/profiles.json`` (``madx-train lang`` and ``madx-train profile``
write them).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

PROFILE_DIR = "_langid"
PROFILE_FILE = "profiles.json"


def _grams(text: str, n_max: int = 3) -> Iterable[str]:
    t = f" {' '.join(text.lower().split())} "
    for n in range(1, n_max + 1):
        for i in range(len(t) - n + 1):
            g = t[i:i + n]
            if g.strip():
                yield g


def build_profile(lines: Iterable[str], top: int = 3000) -> dict[str, float]:
    counts = Counter(g for line in lines for g in _grams(line))
    if not counts:
        raise ValueError("no text to build a language profile from")
    kept = counts.most_common(top)
    total = sum(c for _, c in kept)
    return {g: round(math.log(c / total), 4) for g, c in kept}


# Languages CLD2 lists but never named correctly on their held-out sentences (docs/LID.md): the
# profiles decide them as if CLD2 did not list them.
LIBRARY_MISSES = frozenset({"luo", "ee"})


def _library_languages() -> frozenset[str]:
    import pycld2

    from .language_codes import LanguageCodeError, canonical

    out = set()
    for _, code in pycld2.LANGUAGES:
        try:
            out.add(canonical(code))
        except LanguageCodeError:
            pass
    return frozenset(out - {"un", "xxx", "und"} - LIBRARY_MISSES)


class Profiles:
    """Naive Bayes over character n-gram profiles (one per language)."""

    def __init__(self, profiles: dict[str, dict[str, float]]) -> None:
        self.profiles = profiles
        self.floor = {lang: min(p.values()) - 2.0 for lang, p in profiles.items()}  # unseen n-gram

    def detect(self, text: str, min_coverage: float = 0.3) -> tuple[str | None, float]:
        """(language, posterior); (None, 0.0) without profiles, or when under ``min_coverage`` of the
        text's n-grams are known to the best language (a script no profile has)."""
        if not self.profiles:
            return None, 0.0
        grams = Counter(_grams(text[:2000]))
        s = {lang: sum(c * p.get(g, self.floor[lang]) for g, c in grams.items()) for lang, p in self.profiles.items()}
        m = max(s.values())
        z = {k: math.exp(0.5 * (v - m)) for k, v in s.items()}  # 0.5: n-grams overlap, so they are not independent
        best = max(z, key=z.get)
        known = sum(c for g, c in grams.items() if g in self.profiles[best]) / max(1, sum(grams.values()))
        if known < min_coverage:
            return None, 0.0
        return best, z[best] / sum(z.values())


def cld2(text: str) -> tuple[str | None, float]:
    """CLD2's answer: (canonical code, confidence). The confidence is the share of the text CLD2
    assigns to the language when it calls its answer reliable, and at most 0.49 when it does not
    (below the server's default ``min_detect_confidence``): docs/LID.md measures both groups."""
    import pycld2

    from .language_codes import LanguageCodeError, canonical

    try:
        reliable, _, details = pycld2.detect(text, bestEffort=True)
    except pycld2.error:
        return None, 0.0
    code, percent = details[0][1], details[0][2]
    if code in ("un", "xxx") or percent == 0:
        return None, 0.0
    try:
        lang = canonical(code)
    except LanguageCodeError:
        return None, 0.0
    conf = percent / 100
    return lang, round(conf if reliable else min(conf, 0.49), 4)


class Detector:
    """CLD2 plus the store's profiles for the languages CLD2 cannot name (see the module doc)."""

    def __init__(self, profiles: dict[str, dict[str, float]], override_posterior: float = 0.999) -> None:
        self.override_posterior = override_posterior
        self.library = _library_languages()
        self.profiles = Profiles(profiles)
        self.specialist = frozenset(profiles) - self.library  # profiled languages only the profiles can name

    @property
    def languages(self) -> list[str]:
        return sorted(self.library | set(self.profiles.profiles))

    def detect(self, text: str) -> tuple[str | None, float]:
        """(canonical language code, confidence in [0, 1]); (None, 0.0) for text with no letters
        or that neither detector can place."""
        if not any(ch.isalpha() for ch in text):
            return None, 0.0
        lang, conf = cld2(text)
        if self.specialist and (lang is None or lang in self.profiles.profiles):
            p_lang, p_conf = self.profiles.detect(text)
            # over a reliable CLD2 answer only when the profiles are all but certain: English news
            # sentences full of names otherwise read as Pidgin (docs/LID.md)
            if p_lang in self.specialist and (lang is None or conf < 0.5 or p_conf >= self.override_posterior):
                return p_lang, round(p_conf, 4)
        return lang, conf


def profiles_path(store: str | Path) -> Path:
    return Path(store) / PROFILE_DIR / PROFILE_FILE


def load_profiles(store: str | Path) -> dict[str, dict[str, float]]:
    p = profiles_path(store)
    return json.loads(p.read_text()) if p.exists() else {}


def profiles_of(profiles: dict[str, dict[str, float]], languages: set[str], code_of) -> dict[str, dict[str, float]]:
    """The profiles of ``languages``, each found under its own name or under a name whose
    ``code_of(name)`` is in ``languages`` (a name ``code_of`` refuses with a ValueError matches only
    itself)."""
    def code(tag: str) -> str | None:
        try:
            return code_of(tag)
        except ValueError:
            return None

    return {k: v for k, v in profiles.items() if k in languages or code(k) in languages}


def save_profile(store: str | Path, language: str, profile: dict[str, float]) -> Path:
    p = profiles_path(store)
    p.parent.mkdir(parents=True, exist_ok=True)
    all_ = load_profiles(store)
    all_[language] = profile
    p.write_text(json.dumps(all_, ensure_ascii=False, sort_keys=True) + "\n")
    return p
