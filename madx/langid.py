"""A light language detector over exactly the languages a store serves.

Each language adapter's training text yields a character n-gram profile (1- to 3-grams, the
``top`` most frequent, as log probabilities). Detection is naive Bayes over the text's n-grams with
a floor for unseen ones; confidence is the softmax of the per-character scores. Profiles live in
``<store>/_langid/profiles.json`` (``madx-train lang`` writes them; ``madx-train profile`` too).
No model download, no dependency, and every served language is detectable by construction.
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


class Detector:
    def __init__(self, profiles: dict[str, dict[str, float]]) -> None:
        self.profiles = profiles
        self.floor = {lang: min(p.values()) - 2.0 for lang, p in profiles.items()}  # unseen n-gram

    @property
    def languages(self) -> list[str]:
        return sorted(self.profiles)

    def scores(self, text: str) -> dict[str, float]:
        grams = Counter(_grams(text[:2000]))
        return {lang: sum(c * p.get(g, self.floor[lang]) for g, c in grams.items())
                for lang, p in self.profiles.items()}

    def detect(self, text: str, min_coverage: float = 0.3) -> tuple[str | None, float]:
        """(language, confidence in [0, 1]); (None, 0.0) without profiles or without letters, and
        when under ``min_coverage`` of the text's n-grams are known to the best language (text in a
        script no served language uses, e.g. Cyrillic with no Cyrillic adapter)."""
        if not self.profiles or not any(ch.isalpha() for ch in text):
            return None, 0.0
        s = self.scores(text)
        m = max(s.values())
        z = {k: math.exp(0.5 * (v - m)) for k, v in s.items()}  # 0.5: n-grams overlap, so they are not independent
        best = max(z, key=z.get)
        grams = Counter(_grams(text[:2000]))
        known = sum(c for g, c in grams.items() if g in self.profiles[best]) / max(1, sum(grams.values()))
        if known < min_coverage:
            return None, 0.0
        return best, z[best] / sum(z.values())


def profiles_path(store: str | Path) -> Path:
    return Path(store) / PROFILE_DIR / PROFILE_FILE


def load_profiles(store: str | Path) -> dict[str, dict[str, float]]:
    p = profiles_path(store)
    return json.loads(p.read_text()) if p.exists() else {}


def save_profile(store: str | Path, language: str, profile: dict[str, float]) -> Path:
    p = profiles_path(store)
    p.parent.mkdir(parents=True, exist_ok=True)
    all_ = load_profiles(store)
    all_[language] = profile
    p.write_text(json.dumps(all_, ensure_ascii=False, sort_keys=True) + "\n")
    return p
