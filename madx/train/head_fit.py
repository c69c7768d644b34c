"""Training the MLM head of a backbone that ships none (the embedded e5-small), cheaply.

The backbone is frozen and the head sits after it, so the backbone's last hidden states at masked
positions are computed once (``masked_states``) and the head is then fitted on those vectors for
many epochs (``fit_head``). Training logits cover a candidate vocabulary (the most frequent
training ids plus every label in the batch), which keeps a step ~15x cheaper than the 250k-way
softmax; every reported loss and accuracy (``score_head``) is over the full vocabulary.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..config import AdapterStack
from ..model import MadxModel
from .mlm import IGNORE, MlmHead, mask_tokens


@dataclass(frozen=True)
class HeadFitConfig:
    depth: int = 1
    width: int | None = None
    lr: float = 2e-3
    weight_decay: float = 0.01
    batch_size: int = 2048  # masked tokens per step
    max_epochs: int = 30
    patience: int = 3  # epochs without a better dev loss
    candidates: int = 16384  # most frequent training ids always in the training softmax
    seed: int = 0


@dataclass
class MaskedStates:
    hidden: torch.Tensor  # (N, H) float32: last hidden states at masked positions
    labels: torch.Tensor  # (N,) int64: the original token ids there
    language: torch.Tensor  # (N,) int64: index into ``languages``
    languages: tuple[str, ...]

    def of(self, code: str) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.language == self.languages.index(code)
        return self.hidden[m], self.labels[m]


@torch.no_grad()
def masked_states(model: MadxModel, tokenizer, texts: dict[str, Sequence[str]], max_len: int = 128,
                  seed: int = 0, batch_size: int = 32, stack: AdapterStack | None = None,
                  progress: bool = True) -> MaskedStates:
    """BERT-mask every chunk of each language's lines once (seeded) and keep the hidden states at
    the masked positions, with the invertible adapter's inverse applied as before the head."""
    from ..features import pad
    from .masked_lm import mlm_chunks

    specials = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    model.eval()
    hs, ys, ls = [], [], []
    langs = tuple(texts)
    work = [(li, c) for li, code in enumerate(langs) for c in mlm_chunks(tokenizer, texts[code], max_len)]
    work.sort(key=lambda w: len(w[1]))  # similar lengths share a batch: little padding
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=sum(len(c) for _, c in work), desc="masked states", unit="tok", disable=not progress)
    for b in range(0, len(work), batch_size):
        part = work[b:b + batch_size]
        ids = pad([[tokenizer.cls_token_id, *c, tokenizer.sep_token_id] for _, c in part], tokenizer.pad_token_id)
        mask = (ids != tokenizer.pad_token_id).long()  # (B, T)
        inputs, labels = mask_tokens(ids, torch.isin(ids, specials), tokenizer.mask_token_id, len(tokenizer), g)
        plan = model.plan([stack or AdapterStack()] * len(part))
        h = model.invertible(model.encode(inputs, mask, plan), plan, reverse=True)  # (B, T, H)
        at = labels != IGNORE
        hs.append(h[at].float())
        ys.append(labels[at])
        ls.append(torch.tensor([li for li, _ in part]).unsqueeze(1).expand_as(labels)[at])
        bar.update(sum(len(c) for _, c in part))
    bar.close()
    return MaskedStates(torch.cat(hs), torch.cat(ys), torch.cat(ls), langs)


@dataclass(frozen=True)
class HeadScore:
    loss: float  # mean cross-entropy over the full vocabulary, nats
    top1: float  # masked-token top-1 accuracy, %
    n: int


@torch.no_grad()
def score_head(head: MlmHead, hidden: torch.Tensor, labels: torch.Tensor, chunk: int = 1024) -> HeadScore:
    loss, hit = 0.0, 0
    for i in range(0, len(labels), chunk):
        logits = head(hidden[i:i + chunk])  # (n, V)
        y = labels[i:i + chunk]
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        hit += int((logits.argmax(-1) == y).sum())
    n = max(len(labels), 1)
    return HeadScore(round(loss / n, 4), round(100 * hit / n, 2), len(labels))


def unigram_score(train_ids: Counter, labels: torch.Tensor, vocab_size: int) -> HeadScore:
    """The baseline a head must beat: always the most frequent training token (top-1), and the
    add-one-smoothed unigram distribution (loss)."""
    total = sum(train_ids.values()) + vocab_size
    top = train_ids.most_common(1)[0][0]
    ys = labels.tolist()
    loss = -sum(math.log((train_ids.get(y, 0) + 1) / total) for y in ys) / max(len(ys), 1)
    return HeadScore(round(loss, 4), round(100 * sum(y == top for y in ys) / max(len(ys), 1), 2), len(ys))


@dataclass
class HeadFit:
    head: MlmHead
    curve: list[dict]  # per epoch: train loss (candidate softmax), dev loss and top-1 (full vocab)
    best_epoch: int
    config: HeadFitConfig

    def summary(self) -> dict:
        return {"config": asdict(self.config), "best_epoch": self.best_epoch, "curve": self.curve}


def fit_head(model: MadxModel, train: MaskedStates, dev: MaskedStates, cfg: HeadFitConfig,
             eps: float = 1e-12, progress: bool = True) -> HeadFit:
    """Fit a fresh head (init seeded by ``cfg.seed``) on cached states; keep the epoch with the best
    full-vocabulary dev loss and stop after ``patience`` epochs without one."""
    torch.manual_seed(cfg.seed)
    head = MlmHead(model.backbone.embeddings.word_embeddings, eps=eps, depth=cfg.depth, width=cfg.width)
    head.decoder_weight.requires_grad_(False)
    with torch.no_grad():  # start the bias at the training unigram log-frequencies
        counts = torch.bincount(train.labels, minlength=head.bias.numel()).float()
        head.bias.copy_(torch.log((counts + 0.1) / (counts.sum() + 0.1 * counts.numel())))
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train.labels) / cfg.batch_size)
    total = steps_per_epoch * cfg.max_epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, steps_per_epoch // 2)) * 0.5 * (1 + math.cos(math.pi * s / total)))
    frequent = torch.argsort(counts, descending=True)[:cfg.candidates]
    g = torch.Generator().manual_seed(cfg.seed)
    best, best_state, best_epoch, curve = math.inf, None, 0, []
    for epoch in range(1, cfg.max_epochs + 1):
        head.train()
        order = torch.randperm(len(train.labels), generator=g)
        run = 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"head epoch {epoch}", disable=not progress, leave=False)
        for s in bar:
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            y = train.labels[idx]
            vocab, pos = torch.unique(torch.cat([frequent, y]), return_inverse=True)
            logits = head(train.hidden[idx], vocab)  # (b, |vocab|)
            loss = F.cross_entropy(logits, pos[len(frequent):])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        head.eval()
        d = score_head(head, dev.hidden, dev.labels)
        curve.append({"epoch": epoch, "train_loss": round(run / steps_per_epoch, 4), "dev_loss": d.loss,
                      "dev_top1": d.top1})
        if progress:
            print(f"  epoch {epoch}: train {curve[-1]['train_loss']} dev loss {d.loss} top-1 {d.top1}%", flush=True)
        if d.loss < best - 1e-4:
            best, best_epoch = d.loss, epoch
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items() if k != "decoder_weight"}
        elif epoch - best_epoch >= cfg.patience:
            break
    head.load_state_dict(best_state, strict=False)
    for p in head.parameters():
        p.requires_grad_(False)
    return HeadFit(head, curve, best_epoch, cfg)
