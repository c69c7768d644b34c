"""Offline training loop and evaluation for MAD-X adapters (the backbone always frozen).

- ``fit``: AdamW + linear warmup/decay, deterministic per step (batch order, masking, dropout are
  functions of (seed, step)), resumable checkpoints, step/minute budgets, a tqdm progress bar.
- datasets: MLM chunks, NER windows, QA windows, each turned into padded batches on demand.
- ``evaluate_ner`` / ``evaluate_qa``: zero-shot evaluation with any adapter stack.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save_file
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .config import AdapterStack
from .data import NerFile, QAExample
from .decode import best_spans, word_predictions
from .features import IGNORE, ner_features, project_tags, qa_windows
from .metrics import ner_f1, squad_scores
from .mlm import MlmHead, mask_tokens, mlm_loss
from .model import MadxModel
from .words import join_words, split_words

MLM_HEAD_DIR = "_mlm_head"


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


def pad(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-pad to (B, T_max)."""
    T = max(len(s) for s in seqs)
    out = torch.full((len(seqs), T), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


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


# ---------------------------------------------------------------------- MLM
def mlm_chunks(tokenizer, lines: Sequence[str], max_len: int, progress: bool = False) -> list[list[int]]:
    """Tokenise lines; a line longer than a window is split into consecutive chunks (all of it is
    used, nothing cut). Chunks exclude the special tokens."""
    room = max_len - 2
    out: list[list[int]] = []
    for start in tqdm(range(0, len(lines), 1000), desc="tokenise", disable=not progress, unit="k lines"):
        for ids in tokenizer(list(lines[start:start + 1000]), add_special_tokens=False)["input_ids"]:
            out.extend(ids[i:i + room] for i in range(0, len(ids), room) if ids[i:i + room])
    if not out:
        raise ValueError("no text to train on after tokenisation")
    return out


def mlm_step_fn(model: MadxModel, head: MlmHead, tokenizer, chunks: list[list[int]], stack: AdapterStack,
                cfg: TrainConfig, candidates: int | None = None) -> Callable[[int], tuple[torch.Tensor, int]]:
    """``candidates``: train over the most frequent ids of ``chunks`` plus each batch's labels
    instead of the full vocabulary (the loss a dev evaluation reports stays full-vocabulary)."""
    specials = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    batches = Batches([len(c) for c in chunks], cfg.batch_size, cfg.seed)
    vocab = None
    if candidates:
        counts = torch.bincount(torch.tensor([i for c in chunks for i in c]), minlength=len(tokenizer))
        vocab = torch.argsort(counts, descending=True)[:min(candidates, int((counts > 0).sum()))]

    def loss_at(step: int) -> tuple[torch.Tensor, int]:
        rows = [[tokenizer.cls_token_id, *chunks[i], tokenizer.sep_token_id] for i in batches(step)]
        ids = pad(rows, tokenizer.pad_token_id)
        mask = (ids != tokenizer.pad_token_id).long()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        inputs, labels = mask_tokens(ids, torch.isin(ids, specials), tokenizer.mask_token_id,
                                     len(tokenizer), g)
        return mlm_loss(model, head, inputs, mask, labels, [stack] * len(rows), vocab), int(mask.sum())

    return loss_at


@dataclass(frozen=True)
class MlmBatch:
    inputs: torch.Tensor  # (B, T) masked ids
    mask: torch.Tensor  # (B, T) attention mask
    labels: torch.Tensor  # (B, T) original ids at masked positions, IGNORE elsewhere


def fixed_mlm_batches(tokenizer, lines: Sequence[str], max_len: int = 128, batch_size: int = 32,
                      seed: int = 0) -> list[MlmBatch]:
    """Evaluation batches masked once with a fixed seed: every adapter is scored on the same targets."""
    specials = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    chunks = sorted(mlm_chunks(tokenizer, lines, max_len), key=len)
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(0, len(chunks), batch_size):
        ids = pad([[tokenizer.cls_token_id, *c, tokenizer.sep_token_id] for c in chunks[b:b + batch_size]],
                  tokenizer.pad_token_id)
        inputs, labels = mask_tokens(ids, torch.isin(ids, specials), tokenizer.mask_token_id, len(tokenizer), g)
        out.append(MlmBatch(inputs, (ids != tokenizer.pad_token_id).long(), labels))
    return out


@torch.no_grad()
def mlm_eval(model: MadxModel, head: MlmHead, batches: Sequence[MlmBatch], stack: AdapterStack) -> dict[str, float]:
    """Full-vocabulary masked-LM loss (nats) and top-1 accuracy (%) of ``stack`` on fixed batches."""
    was = model.training
    model.eval()
    loss, hit, n = 0.0, 0, 0
    for b in batches:
        plan = model.plan([stack] * len(b.inputs))
        hidden = model.invertible(model.encode(b.inputs, b.mask, plan), plan, reverse=True)
        at = b.labels != IGNORE
        logits = head(hidden[at])  # (N, V)
        y = b.labels[at]
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        hit += int((logits.argmax(-1) == y).sum())
        n += len(y)
    model.train(was)
    return {"loss": round(loss / max(n, 1), 4), "top1": round(100 * hit / max(n, 1), 2), "targets": n}


def save_mlm_head(head: MlmHead, model: MadxModel, store: Path, meta: dict[str, Any],
                  dtype: torch.dtype | None = None) -> Path:
    d = Path(store) / MLM_HEAD_DIR
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(dtype or v.dtype).contiguous() for k, v in head.state_dict().items()
               if k != "decoder_weight"}
    save_file(tensors, str(d / "mlm_head.safetensors"))
    info = {"backbone": {"name": model.backbone_name, "hidden_size": model.hidden_size}, "shape": head.shape,
            "sha256": hashlib.sha256((d / "mlm_head.safetensors").read_bytes()).hexdigest(), **meta}
    (d / "mlm_head.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return d


def load_mlm_head(model: MadxModel, store: Path) -> MlmHead:
    """The frozen MLM head of this backbone (trained once by ``madx-train mlm-head``)."""
    d = Path(store) / MLM_HEAD_DIR
    if not (d / "mlm_head.safetensors").exists():
        raise FileNotFoundError(f"{d}: no MLM head for this store; train it once with "
                                f"`madx-train mlm-head --store {store}`")
    info = json.loads((d / "mlm_head.json").read_text())
    if info["backbone"]["name"] != model.backbone_name:
        raise ValueError(f"{d}: MLM head was trained for backbone {info['backbone']['name']!r}, "
                         f"not {model.backbone_name!r}")
    raw = (d / "mlm_head.safetensors").read_bytes()  # hashed and parsed from the same bytes
    if hashlib.sha256(raw).hexdigest() != info["sha256"]:
        raise ValueError(f"{d}/mlm_head.safetensors: sha256 does not match mlm_head.json")
    shape = info.get("shape", {"depth": 1})
    head = MlmHead(model.backbone.embeddings.word_embeddings, eps=model.backbone.config.layer_norm_eps,
                   depth=shape["depth"], width=shape.get("width"))
    t = {k: v.float() for k, v in load(raw).items()}
    missing, unexpected = head.load_state_dict(t, strict=False)
    if unexpected or set(missing) != {"decoder_weight"}:
        raise ValueError(f"{d}/mlm_head.safetensors does not fit a depth-{shape['depth']} head "
                         f"(missing {missing}, unexpected {unexpected})")
    for p in head.parameters():
        p.requires_grad_(False)
    return head


def pretrained_mlm_head(model: MadxModel, name_or_path: str) -> MlmHead:
    """Copy the MLM head a checkpoint ships (xlm-roberta-base, bert-base-multilingual, ...)."""
    from transformers import AutoModelForMaskedLM

    lm, info = AutoModelForMaskedLM.from_pretrained(name_or_path, output_loading_info=True)
    fresh = [k for k in info["missing_keys"] if k.startswith(("lm_head.", "cls."))]
    if fresh:
        raise ValueError(f"{name_or_path}: the checkpoint has no MLM head (missing {fresh[:3]}); "
                         f"train one with `madx-train mlm-head --text ...`")
    if hasattr(lm, "lm_head"):  # RoBERTa / XLM-R
        dense, norm, bias = lm.lm_head.dense, lm.lm_head.layer_norm, lm.lm_head.bias
    else:  # BERT
        t = lm.cls.predictions.transform
        dense, norm, bias = t.dense, t.LayerNorm, lm.cls.predictions.bias
    head = MlmHead(model.backbone.embeddings.word_embeddings, eps=norm.eps)
    with torch.no_grad():
        head.dense.load_state_dict(dense.state_dict())
        head.norm.load_state_dict(norm.state_dict())
        head.bias.copy_(bias)
    return head


# ---------------------------------------------------------------------- NER
def ner_train_features(tokenizer, data: NerFile, labels: Sequence[str], max_len: int):
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = sorted({t for s in data.sentences for t in s.tags} - set(index))
    if unknown:
        raise ValueError(f"tags {unknown} are not in the adapter's labels {list(labels)}")
    texts, spans = zip(*(join_words(s.tokens) for s in data.sentences), strict=True) if data.sentences else ((), ())
    ys = [[index[t] for t in s.tags] for s in data.sentences]
    return ner_features(tokenizer, texts, spans, ys, max_len)


def ner_step_fn(model: MadxModel, tokenizer, feats, stack: AdapterStack, cfg: TrainConfig):
    batches = Batches([len(f.input_ids) for f in feats], cfg.batch_size, cfg.seed)

    def loss_at(step: int) -> tuple[torch.Tensor, int]:
        rows = [feats[i] for i in batches(step)]
        ids = pad([f.input_ids for f in rows], tokenizer.pad_token_id)
        y = pad([f.labels for f in rows], IGNORE)
        mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor([len(f.input_ids) for f in rows])[:, None]).long()
        _, logits = model(ids, mask, [stack] * len(rows))
        logits = torch.stack(logits)  # (B, T, L)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE), int(mask.sum())

    return loss_at


# ---------------------------------------------------------------------- QA
def qa_train_windows(tokenizer, examples: Sequence[QAExample], max_len: int, stride: int):
    """Every window of every answered question. A window that does not hold the (first) gold
    answer is kept with both targets on ``<s>`` (index 0), as in BERT's SQuAD recipe: the model
    learns to say "not here", which makes span scores comparable across windows
    (``decode.best_spans`` normalises over context tokens plus ``<s>``)."""
    out = []
    for ex in examples:
        if ex.answers:
            out.extend(qa_windows(tokenizer, ex.question, ex.context, max_len, stride, ex.answers[0]))
    if not any(w.start_position > 0 for w in out):
        raise ValueError("no QA training window contains its answer")
    return out


def qa_answerable(w) -> torch.Tensor:
    """(T,) bool: the positions a QA head may point at in window ``w``: its context tokens and <s>."""
    m = torch.tensor([o is not None for o in w.offsets])
    m[0] = True
    return m


def qa_step_fn(model: MadxModel, tokenizer, windows, stack: AdapterStack, cfg: TrainConfig):
    """Start/end cross-entropy over each window's context tokens and <s> (question tokens and
    separators can never be an answer, so they get no probability mass)."""
    batches = Batches([len(w.input_ids) for w in windows], cfg.batch_size, cfg.seed)

    def loss_at(step: int) -> tuple[torch.Tensor, int]:
        rows = [windows[i] for i in batches(step)]
        ids = pad([w.input_ids for w in rows], tokenizer.pad_token_id)
        mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor([len(w.input_ids) for w in rows])[:, None])
        allowed = torch.zeros_like(mask)  # (B, T)
        for i, w in enumerate(rows):
            allowed[i, :len(w.input_ids)] = qa_answerable(w)
        _, logits = model(ids, mask.long(), [stack] * len(rows))
        logits = torch.stack(logits).masked_fill(~allowed[..., None], -1e4)  # (B, T, 2)
        sp = torch.tensor([w.start_position for w in rows])
        ep = torch.tensor([w.end_position for w in rows])
        loss = (F.cross_entropy(logits[..., 0], sp) + F.cross_entropy(logits[..., 1], ep)) / 2
        return loss, int(mask.sum())

    return loss_at


# ---------------------------------------------------------------------- inference
@torch.no_grad()
def logits_for(model: MadxModel, seqs: Sequence[Sequence[int]],
               stacks: Sequence[AdapterStack | tuple[AdapterStack, ...]], pad_id: int,
               batch_tokens: int = 8192, progress: bool = False, desc: str = "eval") -> list[torch.Tensor]:
    """Head logits (T_i, n_out) for each sequence; batches are formed from length-sorted rows
    (each row keeps its own stack) under a padded-token budget. A tuple of stacks for a sequence is
    an ensemble: the sequence runs once per stack (rows of the same batches) and the logits are averaged."""
    if any(isinstance(st, tuple) for st in stacks):
        flat_seqs, flat_stacks, owner = [], [], []
        for i, (q, st) in enumerate(zip(seqs, stacks, strict=True)):
            for one in (st if isinstance(st, tuple) else (st,)):
                flat_seqs.append(q)
                flat_stacks.append(one)
                owner.append(i)
        flat = logits_for(model, flat_seqs, flat_stacks, pad_id, batch_tokens, progress, desc)
        groups: list[list[torch.Tensor]] = [[] for _ in seqs]
        for i, lg in zip(owner, flat, strict=True):
            groups[i].append(lg)
        return [torch.stack(g).mean(0) for g in groups]
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out: list[torch.Tensor | None] = [None] * len(seqs)
    bar = tqdm(total=len(seqs), desc=desc, disable=not progress, unit="seq", dynamic_ncols=True)
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and (j + 1 - i) * len(seqs[order[j]]) <= batch_tokens:
            j += 1
        rows = order[i:j]
        ids = pad([seqs[r] for r in rows], pad_id)
        lens = torch.tensor([len(seqs[r]) for r in rows])
        mask = (torch.arange(ids.shape[1])[None, :] < lens[:, None]).long()
        _, logits = model(ids, mask, [stacks[r] for r in rows])
        for k, r in enumerate(rows):
            out[r] = logits[k][:len(seqs[r])].float()
        bar.update(len(rows))
        i = j
    bar.close()
    return out  # type: ignore[return-value]


def evaluate_ner(model: MadxModel, tokenizer, stack: AdapterStack | tuple[AdapterStack, ...], data: NerFile,
                 max_len: int = 256,
                 drop_types: Sequence[str] = (), progress: bool = False, desc: str = "eval ner",
                 words: str = "gold", per_example: bool = False) -> dict[str, Any]:
    """Entity-level F1 of the task adapter's predictions on ``data`` under ``stack``. Gold types in
    ``drop_types`` (e.g. DATE, MISC, which the adapter cannot predict) are scored as O.

    ``words="gold"`` tags the data's own tokens; ``words="segmented"`` tags what the server would:
    each sentence is written out as text (``join_words``), cut into words by ``split_words``, tagged,
    and the word tags are projected onto the gold tokens (``project_tags``). ``per_example`` adds
    each sentence's (true positives, gold, predicted) entity counts (``per_example``), for a bootstrap."""
    if words not in ("gold", "segmented"):
        raise ValueError(f"words {words!r} must be 'gold' or 'segmented'")
    task = (stack[0] if isinstance(stack, tuple) else stack).task  # a tuple: an ensemble of stacks
    labels = model.configs[task].head.labels
    types = {lab[2:] for lab in labels if lab != "O"}
    gold = [[("O" if t != "O" and t[2:] in drop_types else t) for t in s.tags] for s in data.sentences]
    unknown = sorted({t[2:] for g in gold for t in g if t != "O"} - types)
    if unknown:
        raise ValueError(f"gold entity types {unknown} cannot be predicted by {task!r} "
                         f"(labels {list(labels)}); pass them as drop_types to score them as O")
    joined = [join_words(s.tokens) for s in data.sentences]
    texts = [t for t, _ in joined]
    spans = ([sp for _, sp in joined] if words == "gold"
             else [[(w.start, w.end) for w in split_words(t)] for t in texts])
    feats = ner_features(tokenizer, texts, spans, None, max_len, skip_empty=words == "segmented")
    logits = logits_for(model, [f.input_ids for f in feats], [stack] * len(feats), tokenizer.pad_token_id,
                        progress=progress, desc=desc)
    tags = [["O"] * len(sp) for sp in spans]  # words with no sub-word stay O
    for f, lg in zip(feats, logits, strict=True):
        for w, (lab, _) in word_predictions(f.word_ids, lg).items():
            tags[f.sentence][w] = labels[lab]
    pred = tags if words == "gold" else [project_tags(spans[i], tags[i], joined[i][1]) for i in range(len(texts))]
    res = ner_f1(gold, pred)
    return {"f1": 100 * res["f1"], "precision": 100 * res["precision"], "recall": 100 * res["recall"],
            "sentences": len(gold), "gold_entities": res["gold_entities"], "words": words,
            **({"per_example": res["per_sentence"]} if per_example else {})}


def qa_predictions(model: MadxModel, tokenizer, stack: AdapterStack | tuple[AdapterStack, ...],
                   pairs: Sequence[tuple[str, str]],
                   max_len: int = 384, stride: int = 128, progress: bool = False, desc: str = "eval qa") -> list[str]:
    """The best answer string for each (question, context), over all windows of the context."""
    wins, owner = [], []
    for i, (q, c) in enumerate(pairs):
        for w in qa_windows(tokenizer, q, c, max_len, stride):
            wins.append(w)
            owner.append(i)
    logits = logits_for(model, [w.input_ids for w in wins], [stack] * len(wins), tokenizer.pad_token_id,
                        progress=progress, desc=desc)
    per: dict[int, list[int]] = {}
    for k, i in enumerate(owner):
        per.setdefault(i, []).append(k)
    out = [""] * len(pairs)
    for i, ks in per.items():
        spans = best_spans([wins[k].offsets for k in ks], [logits[k][:, 0] for k in ks], [logits[k][:, 1] for k in ks])
        out[i] = pairs[i][1][spans[0].start:spans[0].end] if spans else ""
    return out


def evaluate_qa(model: MadxModel, tokenizer, stack: AdapterStack, examples: Sequence[QAExample], max_len: int = 384,
                stride: int = 128, progress: bool = False, desc: str = "eval qa", blind: bool = True,
                per_example: bool = False) -> dict[str, Any]:
    """SQuAD v1.1 EM/F1 over all windows of each context (doc stride, nothing truncated).
    Questions whose gold answers are all empty strings cannot be scored: an error if all are (a
    file with its labels stripped), else they are left out and counted.

    With ``blind`` it also scores a **question-blind baseline**: one answer per context, the
    model's best span for that context with an empty question, given to every question of the
    context (what a model that ignores the question would score), and ``same_answer_rate``: the
    share of contexts with two or more questions whose questions all got the same answer.
    ``per_example`` adds each scored question's (F1 in [0, 1], 1) (``per_example``), for a bootstrap."""
    unscorable = [ex.id for ex in examples if not any(a for a, _ in ex.answers)]
    if len(unscorable) == len(examples):
        raise ValueError(f"all {len(examples)} questions have empty gold answers (labels stripped?); cannot score")
    examples = [ex for ex in examples if any(a for a, _ in ex.answers)]
    answers = qa_predictions(model, tokenizer, stack, [(ex.question, ex.context) for ex in examples], max_len,
                             stride, progress, desc)
    preds = {ex.id: a for ex, a in zip(examples, answers, strict=True)}
    golds = {ex.id: [a for a, _ in ex.answers if a] for ex in examples}
    scores = squad_scores(preds, golds)
    each = scores.pop("per_question")
    out = {**scores, "unscorable_empty_gold": len(unscorable), **({"per_example": each} if per_example else {})}
    if blind:
        contexts = list(dict.fromkeys(ex.context for ex in examples))
        blind_ans = dict(zip(contexts, qa_predictions(model, tokenizer, stack, [("", c) for c in contexts], max_len,
                                                       stride, progress, f"{desc} (blind)"), strict=True))
        b = squad_scores({ex.id: blind_ans[ex.context] for ex in examples}, golds)
        b.pop("per_question")
        by_ctx: dict[str, set[str]] = {}
        count: dict[str, int] = {}
        for ex in examples:
            by_ctx.setdefault(ex.context, set()).add(preds[ex.id])
            count[ex.context] = count.get(ex.context, 0) + 1
        multi = [c for c in contexts if count[c] > 1]
        out.update({"blind_f1": b["f1"], "blind_exact_match": b["exact_match"],
                    "same_answer_rate": 100.0 * sum(len(by_ctx[c]) == 1 for c in multi) / len(multi) if multi else None})
    return out


def file_provenance(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        b = Path(p).read_bytes()
        out.append({"path": str(p), "bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()})
    return out

