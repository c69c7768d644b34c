"""Masked-LM training data, steps and scoring for language adapters, and the store's frozen MLM head."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save_file
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..config import AdapterStack
from ..features import IGNORE, pad
from ..model import MadxModel
from .loop import Batches, TrainConfig
from .mlm import MlmHead, mask_tokens, mlm_loss

MLM_HEAD_DIR = "_mlm_head"

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
