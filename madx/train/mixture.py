"""Multi-source, target-language-ready batches for task-adapter training (pure: no I/O, no model).

Every step draws one labelled source language with probability proportional to ``n ** (1 / T)``
(``n`` its training windows, ``T`` the temperature: 1 is proportional to size, larger flattens
towards uniform, as XLM-R samples its languages), takes that language's next batch, and picks the
language adapter the batch passes through:

- ``own`` (share ``1 - target - none``): the data's own language adapter, the MAD-X stack;
- ``target``: the adapter of a language without labels, drawn uniformly from ``targets``
  (target-language-ready training: the task adapter learns to read every adapter it will be
  served under, not only the source's);
- ``none``: no language adapter, so the same task adapter also serves the ``task_only`` route.

Every draw is a function of (seed, step) alone, so a run resumed from a checkpoint sees the same
batches as one that never stopped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .loop import Batches

KINDS = ("own", "target", "none")


@dataclass(frozen=True)
class MixtureConfig:
    temperature: float = 1.0
    target_share: float = 0.0
    none_share: float = 0.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for k in ("target_share", "none_share"):
            if not 0 <= getattr(self, k) <= 1:
                raise ValueError(f"{k} must be in [0, 1], got {getattr(self, k)}")
        if self.target_share + self.none_share > 1:
            raise ValueError(f"target_share + none_share must be <= 1, got {self.target_share} + {self.none_share}")

    @property
    def shares(self) -> tuple[float, float, float]:
        """(own, target, none)."""
        return (1 - self.target_share - self.none_share, self.target_share, self.none_share)


def language_probabilities(sizes: Mapping[str, int], temperature: float) -> dict[str, float]:
    """p(language) proportional to size ** (1 / temperature)."""
    if not sizes or min(sizes.values()) < 1:
        raise ValueError(f"every source needs at least one training window, got {dict(sizes)}")
    w = np.array([float(n) for n in sizes.values()]) ** (1.0 / temperature)
    return dict(zip(sizes, (w / w.sum()).tolist(), strict=True))


@dataclass(frozen=True)
class Draw:
    language: str  # the labelled language the batch comes from
    rows: list[int]  # indices into that language's windows
    adapter: str | None  # the language adapter the batch passes through (None: none)
    kind: str  # own | target | none


class Mixture:
    """``step -> Draw`` for ``steps`` steps; see the module docstring."""

    def __init__(self, lengths: Mapping[str, Sequence[int]], adapters: Mapping[str, str], targets: Sequence[str],
                 cfg: MixtureConfig, batch_size: int, seed: int, steps: int) -> None:
        missing = sorted(set(lengths) - set(adapters))
        if missing:
            raise ValueError(f"sources {missing} have no language adapter")
        if cfg.target_share > 0 and not targets:
            raise ValueError("target_share > 0 needs target languages")
        self.languages = list(lengths)
        self.adapters, self.targets, self.cfg = dict(adapters), list(targets), cfg
        self.p = language_probabilities({k: len(v) for k, v in lengths.items()}, cfg.temperature)
        rng = np.random.default_rng([seed, 7919])
        self._lang = rng.choice(len(self.languages), size=steps, p=[self.p[k] for k in self.languages])
        self._kind = rng.choice(len(KINDS), size=steps, p=cfg.shares)
        self._target = rng.integers(max(1, len(self.targets)), size=steps)
        # the k-th draw of a language takes that language's k-th batch
        self._nth = np.zeros(steps, dtype=np.int64)
        seen = np.zeros(len(self.languages), dtype=np.int64)
        for s, li in enumerate(self._lang):
            self._nth[s] = seen[li]
            seen[li] += 1
        self._batches = {k: Batches(v, batch_size, seed) for k, v in lengths.items()}

    def __call__(self, step: int) -> Draw:
        lang = self.languages[self._lang[step]]
        kind = KINDS[self._kind[step]]
        adapter = {"own": self.adapters[lang], "none": None}.get(kind) if kind != "target" else \
            self.targets[self._target[step]]
        return Draw(lang, self._batches[lang](int(self._nth[step])), adapter, kind)
