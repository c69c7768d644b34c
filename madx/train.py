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
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .config import AdapterStack
from .data import NerFile, QAExample
from .decode import best_spans, word_predictions
from .features import IGNORE, ner_features, qa_windows
from .metrics import ner_f1, squad_scores
from .mlm import MlmHead, mask_tokens, mlm_loss
from .model import MadxModel

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
    stopped_by: str  # "steps" | "max_minutes"
    tokens: int
    loss_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss of the last interval)

    @property
    def done(self) -> bool:
        return self.step >= self.steps

    def summary(self) -> dict[str, Any]:
        c = self.loss_curve
        return {"step": self.step, "steps": self.steps, "minutes": round(self.minutes, 2), "stopped_by": self.stopped_by,
                "tokens": self.tokens, "first_loss": c[0][1] if c else None, "last_loss": c[-1][1] if c else None,
                "loss_curve": c}


class CheckpointError(RuntimeError):
    pass


def batch_rows(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Example indices of ``step``: a fresh seeded permutation per epoch, so any step's batch is
    known without replaying the ones before it (exact resume)."""
    if n == 0:
        raise ValueError("no training examples")
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[k * batch_size:(k + 1) * batch_size].tolist()


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
        log_every: int = 10) -> FitResult:
    """Optimise ``params`` on ``loss_at(step) -> (loss, tokens)``.

    ``checkpoint`` (a file) is written every ``cfg.checkpoint_every`` steps and when a budget
    stops the run; an existing one is resumed if it was made by the same run (``identity``).
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

    def save() -> None:
        if checkpoint is not None:
            _atomic_save({"identity": ident, "step": step, "tokens": tokens, "minutes": spent + (time.monotonic() - t0) / 60,
                          "loss_curve": curve, "params": {n: p.detach().clone() for n, p in zip(names, plist, strict=True)},
                          "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, checkpoint)

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
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            save()
    bar.close()
    save()
    return FitResult(step, cfg.steps, spent + (time.monotonic() - t0) / 60, stopped_by, tokens, curve)


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
                cfg: TrainConfig) -> Callable[[int], tuple[torch.Tensor, int]]:
    specials = torch.tensor(sorted(set(tokenizer.all_special_ids)))

    def loss_at(step: int) -> tuple[torch.Tensor, int]:
        rows = [[tokenizer.cls_token_id, *chunks[i], tokenizer.sep_token_id]
                for i in batch_rows(len(chunks), cfg.batch_size, cfg.seed, step)]
        ids = pad(rows, tokenizer.pad_token_id)
        mask = (ids != tokenizer.pad_token_id).long()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        inputs, labels = mask_tokens(ids, torch.isin(ids, specials), tokenizer.mask_token_id,
                                     len(tokenizer), g)
        return mlm_loss(model, head, inputs, mask, labels, [stack] * len(rows)), int(mask.sum())

    return loss_at


def save_mlm_head(head: MlmHead, model: MadxModel, store: Path, meta: dict[str, Any]) -> Path:
    d = Path(store) / MLM_HEAD_DIR
    d.mkdir(parents=True, exist_ok=True)
    save_file({"dense.weight": head.dense.weight.detach().contiguous(), "dense.bias": head.dense.bias.detach(),
               "norm.weight": head.norm.weight.detach(), "norm.bias": head.norm.bias.detach(),
               "bias": head.bias.detach()}, str(d / "mlm_head.safetensors"))
    info = {"backbone": {"name": model.backbone_name, "hidden_size": model.hidden_size},
            "sha256": hashlib.sha256((d / "mlm_head.safetensors").read_bytes()).hexdigest(), **meta}
    (d / "mlm_head.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return d


def load_mlm_head(model: MadxModel, store: Path) -> MlmHead:
    """The frozen MLM head of this backbone (trained once by ``madx-train mlm-head``)."""
    d = Path(store) / MLM_HEAD_DIR
    if not (d / "mlm_head.safetensors").exists():
        raise FileNotFoundError(f"{d}: no MLM head for this store; train it once with "
                                f"`madx-train mlm-head --store {store} --text ...`")
    info = json.loads((d / "mlm_head.json").read_text())
    if info["backbone"]["name"] != model.backbone_name:
        raise ValueError(f"{d}: MLM head was trained for backbone {info['backbone']['name']!r}, "
                         f"not {model.backbone_name!r}")
    if hashlib.sha256((d / "mlm_head.safetensors").read_bytes()).hexdigest() != info["sha256"]:
        raise ValueError(f"{d}/mlm_head.safetensors: sha256 does not match mlm_head.json")
    head = MlmHead(model.backbone.embeddings.word_embeddings, eps=model.backbone.config.layer_norm_eps)
    t = load_file(str(d / "mlm_head.safetensors"))
    with torch.no_grad():
        head.dense.weight.copy_(t["dense.weight"])
        head.dense.bias.copy_(t["dense.bias"])
        head.norm.weight.copy_(t["norm.weight"])
        head.norm.bias.copy_(t["norm.bias"])
        head.bias.copy_(t["bias"])
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
    sents = [s.tokens for s in data.sentences]
    ys = [[index[t] for t in s.tags] for s in data.sentences]
    return ner_features(tokenizer, sents, ys, max_len)


def ner_step_fn(model: MadxModel, tokenizer, feats, stack: AdapterStack, cfg: TrainConfig):
    def loss_at(step: int) -> tuple[torch.Tensor, int]:
        rows = [feats[i] for i in batch_rows(len(feats), cfg.batch_size, cfg.seed, step)]
        ids = pad([f.input_ids for f in rows], tokenizer.pad_token_id)
        y = pad([f.labels for f in rows], IGNORE)
        mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor([len(f.input_ids) for f in rows])[:, None]).long()
        _, logits = model(ids, mask, [stack] * len(rows))
        logits = torch.stack(logits)  # (B, T, L)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE), int(mask.sum())

    return loss_at


# ---------------------------------------------------------------------- QA
def qa_train_windows(tokenizer, examples: Sequence[QAExample], max_len: int, stride: int):
    """Windows that contain the (first) gold answer; windows without it are not trained on."""
    out = []
    for ex in examples:
        if not ex.answers:
            continue
        out.extend(w for w in qa_windows(tokenizer, ex.question, ex.context, max_len, stride, ex.answers[0])
                   if w.start_position > 0)
    if not out:
        raise ValueError("no QA training window contains its answer")
    return out


def qa_step_fn(model: MadxModel, tokenizer, windows, stack: AdapterStack, cfg: TrainConfig):
    def loss_at(step: int) -> tuple[torch.Tensor, int]:
        rows = [windows[i] for i in batch_rows(len(windows), cfg.batch_size, cfg.seed, step)]
        ids = pad([w.input_ids for w in rows], tokenizer.pad_token_id)
        mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor([len(w.input_ids) for w in rows])[:, None])
        _, logits = model(ids, mask.long(), [stack] * len(rows))
        logits = torch.stack(logits).masked_fill(~mask[..., None], -1e4)  # (B, T, 2)
        sp = torch.tensor([w.start_position for w in rows])
        ep = torch.tensor([w.end_position for w in rows])
        loss = (F.cross_entropy(logits[..., 0], sp) + F.cross_entropy(logits[..., 1], ep)) / 2
        return loss, int(mask.sum())

    return loss_at


# ---------------------------------------------------------------------- inference
@torch.no_grad()
def logits_for(model: MadxModel, seqs: Sequence[Sequence[int]], stacks: Sequence[AdapterStack], pad_id: int,
               batch_tokens: int = 8192, progress: bool = False, desc: str = "eval") -> list[torch.Tensor]:
    """Head logits (T_i, n_out) for each sequence; batches are formed from length-sorted rows
    (each row keeps its own stack) under a padded-token budget."""
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


def evaluate_ner(model: MadxModel, tokenizer, stack: AdapterStack, data: NerFile, max_len: int = 256,
                 drop_types: Sequence[str] = (), progress: bool = False, desc: str = "eval ner") -> dict[str, Any]:
    """Entity-level F1 of the task adapter's predictions on ``data`` under ``stack``. Gold types in
    ``drop_types`` (e.g. DATE, MISC, which the adapter cannot predict) are scored as O."""
    labels = model.configs[stack.task].head.labels
    types = {lab[2:] for lab in labels if lab != "O"}
    gold = [[("O" if t != "O" and t[2:] in drop_types else t) for t in s.tags] for s in data.sentences]
    unknown = sorted({t[2:] for g in gold for t in g if t != "O"} - types)
    if unknown:
        raise ValueError(f"gold entity types {unknown} cannot be predicted by {stack.task!r} "
                         f"(labels {list(labels)}); pass them as drop_types to score them as O")
    feats = ner_features(tokenizer, [s.tokens for s in data.sentences], None, max_len)
    logits = logits_for(model, [f.input_ids for f in feats], [stack] * len(feats), tokenizer.pad_token_id,
                        progress=progress, desc=desc)
    pred = [["O"] * len(s.tokens) for s in data.sentences]  # words with no sub-word stay O
    for f, lg in zip(feats, logits, strict=True):
        for w, (lab, _) in word_predictions(f.word_ids, lg).items():
            pred[f.sentence][w] = labels[lab]
    res = ner_f1(gold, pred)
    return {"f1": 100 * res["f1"], "precision": 100 * res["precision"], "recall": 100 * res["recall"],
            "sentences": len(gold), "gold_entities": res["gold_entities"]}


def evaluate_qa(model: MadxModel, tokenizer, stack: AdapterStack, examples: Sequence[QAExample], max_len: int = 384,
                stride: int = 128, progress: bool = False, desc: str = "eval qa") -> dict[str, Any]:
    """SQuAD v1.1 EM/F1 over all windows of each context (doc stride, nothing truncated).
    Questions whose gold answers are all empty strings cannot be scored: an error if all are (a
    file with its labels stripped), else they are left out and counted."""
    unscorable = [ex.id for ex in examples if not any(a for a, _ in ex.answers)]
    if len(unscorable) == len(examples):
        raise ValueError(f"all {len(examples)} questions have empty gold answers (labels stripped?); cannot score")
    examples = [ex for ex in examples if any(a for a, _ in ex.answers)]
    wins, owner = [], []
    for i, ex in enumerate(examples):
        for w in qa_windows(tokenizer, ex.question, ex.context, max_len, stride):
            wins.append(w)
            owner.append(i)
    logits = logits_for(model, [w.input_ids for w in wins], [stack] * len(wins), tokenizer.pad_token_id,
                        progress=progress, desc=desc)
    per: dict[int, list[int]] = {}
    for k, i in enumerate(owner):
        per.setdefault(i, []).append(k)
    preds = {}
    for i, ks in per.items():
        spans = best_spans([wins[k].offsets for k in ks], [logits[k][:, 0] for k in ks], [logits[k][:, 1] for k in ks])
        ctx = examples[i].context
        preds[examples[i].id] = ctx[spans[0].start:spans[0].end] if spans else ""
    golds = {ex.id: [a for a, _ in ex.answers if a] for ex in examples}
    return {**squad_scores(preds, golds), "unscorable_empty_gold": len(unscorable)}


def file_provenance(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        b = Path(p).read_bytes()
        out.append({"path": str(p), "bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()})
    return out

