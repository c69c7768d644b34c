"""The training loop for adapters over a frozen backbone.

``fit``: AdamW + linear warmup/decay, deterministic per step (batch order, masking and dropout are
functions of (seed, step)), resumable checkpoints, step and minute budgets, early stopping on a dev
score (the best parameters are kept), and a tqdm progress bar.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    warmup: float = 0.1  # fraction of steps
    weight_decay: float = 0.0
    max_len: int = 128
    seed: int = 0
    checkpoint_every: int = 100
    max_minutes: float | None = None  # wall-clock budget; not part of the run's identity

    def __post_init__(self) -> None:
        for k in ("steps", "batch_size", "max_len", "checkpoint_every"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of steps in [0, 1), got {self.warmup}")

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("max_minutes")
        d.pop("checkpoint_every")
        return d


@dataclass
class FitResult:
    step: int
    steps: int
    minutes: float
    stopped_by: str  # "steps" | "max_minutes" | "early_stop"
    tokens: int
    loss_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss of the last interval)
    dev_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, dev score), higher is better
    best_step: int | None = None  # the step whose parameters were kept (with a dev set)

    @property
    def done(self) -> bool:
        return self.step >= self.steps or self.stopped_by == "early_stop"

    def summary(self) -> dict[str, Any]:
        c = self.loss_curve
        best = dict(self.dev_curve).get(self.best_step) if self.best_step is not None else None
        return {"step": self.step, "steps": self.steps, "minutes": round(self.minutes, 2), "stopped_by": self.stopped_by,
                "tokens": self.tokens, "first_loss": c[0][1] if c else None, "last_loss": c[-1][1] if c else None,
                "loss_curve": c, "dev_curve": self.dev_curve, "best_step": self.best_step, "best_dev": best}


class CheckpointError(RuntimeError):
    pass


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, pool: int = 50) -> list[list[int]]:
    """One epoch's batches (example indices). A seeded permutation is cut into pools of ``pool``
    batches; each pool is sorted by length and cut into batches, so rows of a batch have similar
    lengths (little padding) while batches stay random; the batch order is shuffled too. Every
    example is used once per epoch except the ``n % batch_size`` left over (a fresh draw each
    epoch). A function of (seed, epoch): any step's batch is known without replaying the others."""
    n = len(lengths)
    if n == 0:
        raise ValueError("no training examples")
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()[:max(1, n // batch_size) * batch_size]
    span = pool * batch_size
    batches: list[list[int]] = []
    for i in range(0, len(perm), span):
        chunk = sorted(perm[i:i + span], key=lambda j: lengths[j])
        batches.extend(chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


class Batches:
    """``step -> example indices`` over ``epoch_batches`` (one epoch cached at a time)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.per_epoch = max(1, len(self.lengths) // batch_size)
        self._epoch, self._batches = -1, []

    def __call__(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, epoch_batches(self.lengths, self.batch_size, self.seed, epoch)
        return self._batches[k]



def _atomic_save(obj: Any, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fit(params: dict[str, nn.Parameter], loss_at: Callable[[int], tuple[torch.Tensor, int]], cfg: TrainConfig,
        checkpoint: Path | None, identity: dict[str, Any], desc: str = "train", progress: bool = True,
        log_every: int = 10, evaluate: Callable[[], float] | None = None, eval_every: int = 0,
        patience: int | None = None, on_score: Callable[[int, float], None] | None = None) -> FitResult:
    """Optimise ``params`` on ``loss_at(step) -> (loss, tokens)``.

    ``checkpoint`` (a file) is written every ``cfg.checkpoint_every`` steps and when a budget
    stops the run; an existing one is resumed if it was made by the same run (``identity``).

    With ``evaluate`` (a dev score, higher is better) the run is scored every ``eval_every`` steps
    and at the end; the best-scoring parameters are the ones left in ``params``, and after
    ``patience`` scorings without a new best the run stops early ("early_stop").
    """
    names = sorted(params)
    plist = [params[n] for n in names]
    opt = torch.optim.AdamW(plist, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = int(cfg.warmup * cfg.steps)

    def schedule(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return max(0.0, (cfg.steps - s) / max(1, cfg.steps - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    ident = {**identity, "train": cfg.identity(), "params": {n: list(params[n].shape) for n in names}}
    step, tokens, curve, spent = 0, 0, [], 0.0
    dev: list[tuple[int, float]] = []
    best: tuple[int, float, dict[str, torch.Tensor]] | None = None  # (step, score, params)
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        if state["identity"] != ident:
            diff = sorted(k for k in set(ident) | set(state["identity"]) if ident.get(k) != state["identity"].get(k))
            raise CheckpointError(f"{checkpoint} belongs to a different run (differs in {diff}); "
                                  f"delete it or pass --no-resume")
        with torch.no_grad():
            for n, p in zip(names, plist, strict=True):
                p.copy_(state["params"][n])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, tokens, spent = state["step"], state["tokens"], state["minutes"]
        curve = [tuple(x) for x in state["loss_curve"]]
        dev = [tuple(x) for x in state.get("dev_curve", [])]
        if state.get("best") is not None:
            b = state["best"]
            best = (b["step"], b["score"], b["params"])

    def save() -> None:
        if checkpoint is not None:
            _atomic_save({"identity": ident, "step": step, "tokens": tokens, "minutes": spent + (time.monotonic() - t0) / 60,
                          "loss_curve": curve, "params": {n: p.detach().clone() for n, p in zip(names, plist, strict=True)},
                          "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "dev_curve": dev,
                          "best": None if best is None else {"step": best[0], "score": best[1], "params": best[2]}},
                         checkpoint)

    def score() -> bool:
        """Score on dev; True when patience has run out."""
        nonlocal best
        value = float(evaluate())  # type: ignore[misc]
        dev.append((step, round(value, 4)))
        if on_score is not None:  # e.g. a snapshot of the parameters at this step (learning curves)
            on_score(step, value)
        if best is None or value > best[1]:
            best = (step, value, {n: p.detach().clone() for n, p in zip(names, plist, strict=True)})
        bar.write(f"{desc}: step {step} dev {value:.2f} (best {best[1]:.2f} at step {best[0]})")
        since = sum(1 for s_, _ in dev if s_ > best[0])
        return patience is not None and since >= patience

    t0 = time.monotonic()
    stopped_by = "steps"
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, disable=not progress, unit="step", dynamic_ncols=True)
    window: list[float] = []
    tok0, tw = tokens, time.monotonic()
    while step < cfg.steps:
        if cfg.max_minutes is not None and (time.monotonic() - t0) / 60 >= cfg.max_minutes:
            stopped_by = "max_minutes"
            break
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout is a function of (seed, step)
        loss, ntok = loss_at(step)
        if not torch.isfinite(loss):
            save()
            raise FloatingPointError(f"{desc}: loss is {loss.item()} at step {step}; checkpoint kept at {checkpoint}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plist, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens += ntok
        window.append(loss.item())
        if step % log_every == 0 or step == cfg.steps:
            curve.append((step, round(sum(window) / len(window), 5)))
            rate = (tokens - tok0) / max(1e-9, time.monotonic() - tw)
            bar.set_postfix(loss=f"{curve[-1][1]:.4f}", tok_s=f"{rate:.0f}", lr=f"{sched.get_last_lr()[0]:.2e}")
            window.clear()
        bar.update(1)
        if evaluate is not None and eval_every and step % eval_every == 0 and step < cfg.steps and score():
            stopped_by = "early_stop"
            break
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            save()
    if evaluate is not None and step >= cfg.steps and (not dev or dev[-1][0] != step):
        score()
    bar.close()
    save()
    if best is not None and (step >= cfg.steps or stopped_by == "early_stop"):
        with torch.no_grad():  # leave the best-scoring parameters in place
            for n, p in zip(names, plist, strict=True):
                p.copy_(best[2][n])
    return FitResult(step, cfg.steps, spent + (time.monotonic() - t0) / 60, stopped_by, tokens, curve, dev,
                     best[0] if best is not None else None)
