"""Trainer: loss decreases, exact resume, artifacts round-trip, CLI end to end on tiny fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from madx.artifacts import load_store, read_manifest
from madx.backbone import load_backbone
from madx.config import AdapterConfig, AdapterStack
from madx.data import read_conll, read_squad
from madx.decode import best_spans, word_predictions
from madx.model import MadxModel
from madx.train import (
    CheckpointError,
    TrainConfig,
    batch_rows,
    evaluate_ner,
    evaluate_qa,
    fit,
    ner_step_fn,
    ner_train_features,
    qa_step_fn,
    qa_train_windows,
)
from madx.train_cli import NER_LABELS, main

FIX = Path(__file__).parent / "fixtures"
TINY = "tiny-xlmr-0+xlmr"  # 2 layers x 32 hidden, real XLM-R tokenizer and vocabulary


def tiny():
    bb = load_backbone(TINY)
    return MadxModel(bb.model, bb.name), bb.tokenizer


def ner_setup(steps: int = 30, seed: int = 0):
    model, tok = tiny()
    feats = ner_train_features(tok, read_conll(FIX / "ner_en.conll"), NER_LABELS, 32)
    mod = model.add_adapter(AdapterConfig.task("ner", "ner", NER_LABELS))
    model.train()
    cfg = TrainConfig(steps=steps, batch_size=2, lr=1e-2, seed=seed, checkpoint_every=5, warmup=0.0)
    return model, tok, mod, cfg, ner_step_fn(model, tok, feats, AdapterStack(None, "ner"), cfg)


def test_batch_rows_cover_each_epoch_and_are_seeded():
    n, bs = 10, 3
    epoch0 = sum((batch_rows(n, bs, 7, s) for s in range(3)), [])
    assert len(set(epoch0)) == 9 and set(epoch0) <= set(range(n))
    assert batch_rows(n, bs, 7, 4) == batch_rows(n, bs, 7, 4)
    assert batch_rows(n, bs, 7, 0) != batch_rows(n, bs, 8, 0)


@pytest.mark.parametrize("task", ["ner", "qa"])
def test_loss_decreases(task):
    model, tok = tiny()
    if task == "ner":
        ex = ner_train_features(tok, read_conll(FIX / "ner_en.conll"), NER_LABELS, 32)
        mod = model.add_adapter(AdapterConfig.task("t", "ner", NER_LABELS))
        make = ner_step_fn
    else:
        ex = qa_train_windows(tok, read_squad(FIX / "qa.json"), 64, 16)
        mod = model.add_adapter(AdapterConfig.task("t", "qa"))
        make = qa_step_fn
    model.train()
    cfg = TrainConfig(steps=40, batch_size=4, lr=1e-2, warmup=0.0)
    res = fit(dict(mod.named_parameters()), make(model, tok, ex, AdapterStack(None, "t"), cfg), cfg, None, {},
              progress=False, log_every=5)
    first, last = res.loss_curve[0][1], res.loss_curve[-1][1]
    assert last < 0.5 * first, res.loss_curve


def test_resume_is_exact(tmp_path):
    model, _, mod, cfg, step_fn = ner_setup(steps=10)
    straight = fit(dict(mod.named_parameters()), step_fn, cfg, None, {"run": 1}, progress=False)
    want = {k: v.clone() for k, v in mod.state_dict().items()}

    model, _, mod, cfg, step_fn = ner_setup(steps=10)
    ck = tmp_path / "ck.pt"

    def dies_at_7(step):
        if step == 7:
            raise KeyboardInterrupt
        return step_fn(step)

    with pytest.raises(KeyboardInterrupt):
        fit(dict(mod.named_parameters()), dies_at_7, cfg, ck, {"run": 1}, progress=False)
    assert torch.load(ck, weights_only=True)["step"] == 5  # last periodic checkpoint
    model, _, mod, cfg, step_fn = ner_setup(steps=10)
    resumed = fit(dict(mod.named_parameters()), step_fn, cfg, ck, {"run": 1}, progress=False)
    assert resumed.step == straight.step == 10
    for k, v in mod.state_dict().items():
        assert torch.equal(v, want[k]), k
    with pytest.raises(CheckpointError, match="different run"):
        fit(dict(mod.named_parameters()), step_fn, cfg, ck, {"run": 2}, progress=False)


def test_max_minutes_stops_and_checkpoints(tmp_path):
    _, _, mod, _, step_fn = ner_setup()
    cfg = TrainConfig(steps=50, batch_size=2, max_minutes=0.0)
    res = fit(dict(mod.named_parameters()), step_fn, cfg, tmp_path / "ck.pt", {}, progress=False)
    assert res.stopped_by == "max_minutes" and not res.done and (tmp_path / "ck.pt").exists()


def test_word_predictions_use_first_subword():
    logits = torch.tensor([[9.0, 0, 0], [0, 9.0, 0], [0, 0, 9.0], [9.0, 0, 0], [9.0, 0, 0]])
    got = word_predictions([None, 0, 0, 1, None], logits)
    assert {w: lab for w, (lab, _) in got.items()} == {0: 1, 1: 0}


def test_best_spans_merge_windows_and_respect_context():
    offs = [[None, None, (0, 3), (4, 8)], [None, (4, 8), (9, 12)]]
    s = [torch.tensor([50.0, 50.0, 0.0, 5.0]), torch.tensor([50.0, 1.0, 4.0])]
    e = [torch.tensor([50.0, 50.0, 0.0, 5.0]), torch.tensor([50.0, 1.0, 4.0])]
    spans = best_spans(offs, s, e, top_k=3)
    assert spans[0].start == 4 and spans[0].end == 8  # question/special tokens never win
    assert len({(x.start, x.end) for x in spans}) == len(spans)
    assert all(0 < x.score <= 1 for x in spans)


def test_cli_end_to_end_and_artifacts_reload(tmp_path, capsys):
    store = tmp_path / "store"
    common = ["--store", str(store), "--backbone", TINY, "--no-progress", "--batch-size", "2"]
    assert main(["mlm-head", *common, "--text", str(FIX / "text_sw.txt"), "--steps", "3"]) == 0
    assert main(["lang", *common, "--language", "sw", "--text", str(FIX / "text_sw.txt"), "--steps", "3",
                 "--exclude-conll", str(FIX / "ner_en.conll")]) == 0
    assert main(["lang", *common, "--language", "en", "--text", str(FIX / "text_sw.txt"), "--steps", "2"]) == 0
    assert main(["task", *common, "--task", "ner", "--name", "ner", "--lang-adapter", "en",
                 "--train", str(FIX / "ner_en.conll"), "--steps", "4", "--max-len", "32"]) == 0
    assert main(["task", *common, "--task", "qa", "--name", "qa", "--train", str(FIX / "qa.json"), "--steps", "2",
                 "--max-len", "64", "--stride", "16"]) == 0
    m = read_manifest(store)["adapters"]
    assert sorted(m) == ["en", "ner", "qa", "sw"]
    assert m["ner"]["data"][0]["sha256"] and m["sw"]["metrics"]["lines"] == 6
    out = tmp_path / "results.json"
    assert main(["eval", "--store", str(store), "--backbone", TINY, "--task-adapter", "ner", "--no-progress",
                 "--test", f"sw={FIX / 'ner_en.conll'}", "--row", "(c)", "--out", str(out)]) == 0
    assert main(["eval", "--store", str(store), "--backbone", TINY, "--task-adapter", "qa", "--no-progress",
                 "--no-lang-adapter", "--test", f"en={FIX / 'qa.json'}", "--row", "(a)", "--out", str(out),
                 "--max-len", "64", "--stride", "16"]) == 0
    rows = json.loads(out.read_text())
    assert [r["stack"] for r in rows] == ["sw+ner", "-+qa"]
    assert main(["report", str(out)]) == 0
    assert "| (c) |" in capsys.readouterr().out

    # the stored artifacts reproduce the evaluation exactly in a fresh model
    model, tok = tiny()
    load_store(model, store, ["sw", "ner"])
    again = evaluate_ner(model, tok, AdapterStack("sw", "ner"), read_conll(FIX / "ner_en.conll"))
    assert again["f1"] == pytest.approx(rows[0]["f1"], abs=0.01)
    load_store(model, store, ["qa"])
    qa = evaluate_qa(model, tok, AdapterStack(None, "qa"), read_squad(FIX / "qa.json"), 64, 16)
    assert qa["f1"] == pytest.approx(rows[1]["f1"], abs=0.01)


@pytest.mark.parametrize("argv, message", [
    (["task", "--task", "ner", "--name", "x", "--train", "missing.conll"], "missing.conll: no such file"),
    (["task", "--task", "ner", "--name", "x", "--train", str(FIX / "ner_bad.conll")], "ner_bad.conll:4: tag 'X-LOC'"),
    (["lang", "--language", "sw", "--text", str(FIX / "text_sw.txt")], "no MLM head for this store"),
])
def test_cli_bad_input_errors(tmp_path, capsys, argv, message):
    assert main([*argv, "--store", str(tmp_path), "--backbone", TINY, "--no-progress", "--steps", "1"]) == 2
    assert message in capsys.readouterr().err


def test_mlm_head_is_copied_from_a_checkpoint_that_has_one(tmp_path):
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    from madx.backbone import xlmr_tokenizer
    from madx.train import load_mlm_head

    tok = xlmr_tokenizer()
    torch.manual_seed(0)
    lm = XLMRobertaForMaskedLM(XLMRobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=4, intermediate_size=64,
                                                max_position_embeddings=66, pad_token_id=1))
    ckpt = tmp_path / "ckpt"
    lm.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    store = tmp_path / "store"
    assert main(["mlm-head", "--store", str(store), "--backbone", str(ckpt), "--from-backbone", "--no-progress"]) == 0
    bb = load_backbone(str(ckpt))
    head = load_mlm_head(MadxModel(bb.model, bb.name), store)
    h = torch.randn(5, 32)
    with torch.no_grad():
        assert torch.allclose(head(h), lm.lm_head(h), atol=1e-5)
