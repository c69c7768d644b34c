"""Trainer: loss decreases, exact resume, artifacts round-trip, CLI end to end on tiny fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from madx.artifacts import load_store, read_artifact, read_manifest
from madx.backbone import load_backbone
from madx.config import AdapterConfig, AdapterStack
from madx.decode import best_spans, word_predictions
from madx.model import MadxModel
from madx.train.cli import main
from madx.train.data import read_conll, read_squad
from madx.train.evaluate import evaluate_ner, evaluate_qa
from madx.train.loop import Batches, CheckpointError, TrainConfig, epoch_batches, fit
from madx.train.task_steps import ner_step_fn, ner_train_features, qa_step_fn, qa_train_windows
from madx.train.train_commands import NER_LABELS

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


def test_epoch_batches_cover_each_epoch_are_seeded_and_length_sorted():
    lengths = [5, 40, 7, 38, 6, 39, 8, 41, 9, 37]
    ep0 = epoch_batches(lengths, 3, seed=7, epoch=0, pool=10)
    seen = sum(ep0, [])
    assert len(seen) == 9 and len(set(seen)) == 9  # each example at most once; n % batch_size left over
    assert epoch_batches(lengths, 3, 7, 0, pool=10) == ep0
    assert epoch_batches(lengths, 3, 8, 0, pool=10) != ep0 and epoch_batches(lengths, 3, 7, 1, pool=10) != ep0
    # inside a pool rows are sorted by length: short rows and long rows do not share a batch
    by_len = sorted(([lengths[i] for i in b] for b in ep0), key=min)
    assert all(max(a) <= min(b) for a, b in zip(by_len, by_len[1:], strict=False))
    b = Batches(lengths, 3, seed=7)
    assert b.per_epoch == 3 and [b(s) for s in range(3)] == epoch_batches(lengths, 3, 7, 0)


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
    # snapshots at every dev scoring (learning curves): one file per scoring and its dev loss
    text = tmp_path / "sw30.txt"  # a dev cut needs 10 training lines per dev line
    text.write_text("".join(f"{ln} {i}\n" for i in range(5) for ln in (FIX / "text_sw.txt").read_text().splitlines()))
    assert main(["lang", *common, "--language", "sw", "--name", "sw-curve", "--text", str(text),
                 "--steps", "4", "--dev-lines", "2", "--eval-every", "2", "--snapshots", str(tmp_path / "snap")]) == 0
    snaps = sorted(p.name for p in (tmp_path / "snap" / "sw-curve").iterdir())
    assert snaps == ["adapter_config.json", "scores.jsonl", "step-000002.safetensors", "step-000004.safetensors"]
    assert [json.loads(x)["step"] for x in (tmp_path / "snap" / "sw-curve" / "scores.jsonl").read_text().splitlines()] == [2, 4]
    assert main(["task", *common, "--task", "ner", "--name", "ner", "--lang-adapter", "en",
                 "--train", str(FIX / "ner_en.conll"), "--steps", "4", "--max-len", "32"]) == 0
    assert main(["task", *common, "--task", "qa", "--name", "qa", "--train", str(FIX / "qa.json"), "--steps", "2",
                 "--max-len", "64", "--stride", "16"]) == 0
    # training over a bf16 backbone (faster on CPUs with native bf16): the adapter stays fp32, the
    # artifact records the precision it was trained at
    assert main(["task", *common, "--task", "ner", "--name", "ner-bf16", "--lang-adapter", "en", "--backbone-dtype",
                 "bf16", "--train", str(FIX / "ner_en.conll"), "--steps", "3", "--max-len", "32"]) == 0
    meta, _ = read_artifact(store / "ner-bf16")
    assert meta["training"]["config"]["backbone_dtype"] == "bf16"
    # a language adapter over a bf16 backbone: the frozen fp32 MLM head meets the bf16 tied decoder
    # (both the candidate-softmax training loss and the full-vocabulary dev loss)
    assert main(["lang", *common, "--language", "sw", "--name", "sw-bf16", "--text", str(text), "--steps", "2",
                 "--candidates", "64", "--dev-lines", "2", "--eval-every", "2", "--backbone-dtype", "bf16"]) == 0
    assert read_artifact(store / "sw-bf16")[0]["training"]["config"]["backbone_dtype"] == "bf16"
    # a warm start from another language adapter: with lr 0 the weights are exactly the source's;
    # a source of another shape is refused
    assert main(["lang", *common, "--language", "sw", "--name", "sw-from-en", "--init-from", "en", "--text",
                 str(FIX / "text_sw.txt"), "--steps", "1", "--lr", "0"]) == 0
    from madx.artifacts import read_artifact_bytes

    (_, _, w_en), (_, _, w_sw) = (read_artifact_bytes(store / n).parse() for n in ("en", "sw-from-en"))
    assert read_manifest(store)["adapters"]["sw-from-en"]["metrics"]["init_from"] == "en"
    assert set(w_en) == set(w_sw) and all(torch.equal(w_en[k], w_sw[k]) for k in w_en)
    with pytest.raises(SystemExit, match="does not fit"):
        main(["lang", *common, "--language", "sw", "--name", "sw-rf4", "--init-from", "en", "--reduction-factor", "4",
              "--text", str(FIX / "text_sw.txt"), "--steps", "1"])
    m = read_manifest(store)["adapters"]
    assert sorted(m) == ["en", "ner", "ner-bf16", "qa", "sw", "sw-bf16", "sw-curve", "sw-from-en"]
    assert m["ner"]["data"][0]["sha256"] and m["sw"]["metrics"]["lines"] == 6
    out = tmp_path / "results.json"
    assert main(["eval", "--store", str(store), "--backbone", TINY, "--task-adapter", "ner", "--no-progress",
                 "--test", f"sw={FIX / 'ner_en.conll'}", "--row", "(c)", "--out", str(out)]) == 0
    assert main(["eval", "--store", str(store), "--backbone", TINY, "--task-adapter", "qa", "--no-progress",
                 "--no-lang-adapter", "--test", f"en={FIX / 'qa.json'}", "--row", "(a)", "--out", str(out),
                 "--max-len", "64", "--stride", "16"]) == 0
    # a target without its adapter: an error, or skipped with --skip-missing (partial protocol runs)
    with pytest.raises(SystemExit, match="no adapter 'yo'"):
        main(["eval", "--store", str(store), "--backbone", TINY, "--task-adapter", "ner", "--no-progress",
              "--test", f"yo={FIX / 'ner_en.conll'}", "--row", "(c)"])
    assert main(["eval", "--store", str(store), "--backbone", TINY, "--task-adapter", "ner", "--no-progress",
                 "--skip-missing", "--test", f"yo={FIX / 'ner_en.conll'}", "--row", "(c)", "--out", str(out)]) == 0
    assert "skipped 'yo'" in capsys.readouterr().err
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

    # --ensemble-none: each target's stack averaged with the same task adapter under no language adapter
    ens = tmp_path / "ensemble.json"
    assert main(["eval", "--store", str(store), "--backbone", TINY, "--task-adapter", "ner", "--no-progress",
                 "--ensemble-none", "--test", f"sw={FIX / 'ner_en.conll'}", "--row", "(e)", "--out", str(ens)]) == 0
    [row] = json.loads(ens.read_text())
    assert row["stack"] == "sw+ner + -+ner"
    both = evaluate_ner(model, tok, (AdapterStack("sw", "ner"), AdapterStack(None, "ner")), read_conll(FIX / "ner_en.conll"))
    assert row["f1"] == pytest.approx(both["f1"], abs=0.01)
    with pytest.raises(SystemExit, match="needs a language adapter"):
        main(["eval", "--store", str(store), "--backbone", TINY, "--task-adapter", "ner", "--no-progress",
              "--ensemble-none", "--no-lang-adapter", "--test", f"sw={FIX / 'ner_en.conll'}", "--row", "(e)"])


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
    from madx.train.masked_lm import load_mlm_head

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


def test_qa_windows_without_the_answer_are_trained_to_point_at_cls():
    _, tok = tiny()
    ex = read_squad(FIX / "qa.json")
    wins = qa_train_windows(tok, ex, 24, 8)  # small windows: most do not hold the answer
    with_answer = [w for w in wins if w.start_position > 0]
    without = [w for w in wins if w.start_position == 0]
    assert with_answer and without  # both kinds are trained on
    assert all(w.end_position == 0 for w in without)
    for w in with_answer:  # the targets are context tokens, in order
        assert w.offsets[w.start_position] is not None and w.offsets[w.end_position] is not None
        assert w.start_position <= w.end_position


def test_best_spans_prefers_the_window_that_holds_the_answer():
    # window 0 says "not here" (mass on <s>) but is peaked on one context token; window 1 holds the
    # answer with a flatter distribution and little mass on <s>. Normalising each window over its
    # context alone (the old decoder) would pick window 0's span.
    offs = [[None, None, (0, 3), (4, 8), (9, 12)], [None, None, (13, 17), (18, 22), (23, 27)]]
    s = [np.array([9.0, 0, 4.0, -4, -4]), np.array([-5.0, 0, 2.0, 1.5, 1.0])]
    spans = best_spans(offs, s, s, top_k=2)
    assert (spans[0].start, spans[0].end) == (13, 17)
    old = best_spans(offs, s, s, top_k=1, null_index=None)
    assert (old[0].start, old[0].end) == (0, 3)


def test_qa_question_blind_baseline_scores_one_answer_per_context(monkeypatch):
    import madx.train.evaluate as tr
    from madx.train.data import QAExample

    ex = [QAExample("1", "Who?", "Ann met Bob in Rome.", (("Ann", 0),)),
          QAExample("2", "Where?", "Ann met Bob in Rome.", (("Rome", 15),)),
          QAExample("3", "Whom?", "Ann met Bob in Rome.", (("Bob", 8),))]

    def fake(model, tok, stack, pairs, *a, **k):  # reads the question: right answers; blind: "Rome"
        return ["Rome" if q == "" else {"Who?": "Ann", "Where?": "Rome", "Whom?": "Bob"}[q] for q, _ in pairs]

    monkeypatch.setattr(tr, "qa_predictions", fake)
    res = tr.evaluate_qa(None, None, AdapterStack(None, "qa"), ex)
    assert res["f1"] == 100 and res["blind_f1"] == pytest.approx(100 / 3) and res["same_answer_rate"] == 0


def test_fit_keeps_the_best_dev_parameters_and_stops_early(tmp_path):
    _, _, mod, _, step_fn = ner_setup()
    cfg = TrainConfig(steps=40, batch_size=2, lr=1e-2, warmup=0.0, checkpoint_every=5)
    scores = iter([1.0, 3.0, 2.0, 2.5, 2.9, 9.0])  # best at the 2nd scoring, then no gain for 3
    snaps = []

    def evaluate():
        snaps.append({k: v.clone() for k, v in mod.state_dict().items()})
        return next(scores)

    res = fit(dict(mod.named_parameters()), step_fn, cfg, tmp_path / "ck.pt", {}, progress=False,
              evaluate=evaluate, eval_every=4, patience=3)
    assert res.stopped_by == "early_stop" and res.done and res.step == 20
    assert [s for s, _ in res.dev_curve] == [4, 8, 12, 16, 20] and res.best_step == 8
    for k, v in mod.state_dict().items():  # the parameters left in place are those scored best
        assert torch.equal(v, snaps[1][k]), k
    assert res.summary()["best_dev"] == 3.0


def test_evaluate_ner_on_the_servers_words_equals_gold_words_where_they_agree():
    model, tok, mod, cfg, step_fn = ner_setup(steps=40)
    fit(dict(mod.named_parameters()), step_fn, cfg, None, {}, progress=False)
    data = read_conll(FIX / "ner_en.conll")  # plain space-separated English: ICU's words are the gold tokens
    from madx.words import join_words, split_words

    assert all([w.text for w in split_words(join_words(s.tokens)[0])] == list(s.tokens) for s in data.sentences)
    model.eval()
    gold = evaluate_ner(model, tok, AdapterStack(None, "ner"), data)
    seg = evaluate_ner(model, tok, AdapterStack(None, "ner"), data, words="segmented")
    assert gold["f1"] > 0 and seg["f1"] == gold["f1"] and seg["words"] == "segmented"


def test_cli_task_with_dev_set_epochs_and_warm_start(tmp_path, capsys):
    store = tmp_path / "store"
    common = ["--store", str(store), "--backbone", TINY, "--no-progress", "--batch-size", "2", "--max-len", "32"]
    ner = ["task", *common, "--task", "ner", "--train", str(FIX / "ner_en.conll"), "--dev", str(FIX / "ner_en.conll")]
    assert main([*ner, "--name", "a", "--epochs", "2", "--eval-every", "1", "--lr", "1e-2"]) == 0
    m = read_manifest(store)["adapters"]["a"]["metrics"]
    assert m["epochs"] == 2.0 and len(m["dev_curve"]) >= 2 and m["dev_score"] == max(v for _, v in m["dev_curve"])
    assert m["trained_on_language_adapter"] is None and m["dev"]["metric"] == "entity F1"
    assert main([*ner, "--name", "b", "--steps", "1", "--init-from", "a"]) == 0
    assert read_manifest(store)["adapters"]["b"]["metrics"]["init_from"] == "a"
    with pytest.raises(SystemExit, match="same architecture"):
        main([*ner, "--name", "c", "--steps", "1", "--init-from", "a", "--reduction-factor", "8"])


@pytest.mark.parametrize("drop, rc", [([], 2), (["--drop-types", "DATE"], 0)])
def test_single_source_ner_trains_and_scores_a_dropped_type_as_o(tmp_path, capsys, drop, rc):
    dated = tmp_path / "dated.conll"  # MasakhaNER-style data: a DATE the adapter's labels lack
    dated.write_text((FIX / "ner_en.conll").read_text().rstrip("\n") + "\n\nMonday\tB-DATE\nmorning\tI-DATE\n.\tO\n")
    common = ["--store", str(tmp_path / "store"), "--backbone", TINY, "--no-progress", "--batch-size", "2", "--max-len", "32"]
    assert main(["task", *common, "--task", "ner", "--name", "n", "--train", str(dated), "--dev", str(dated),
                 "--steps", "1", *drop]) == rc
    err = capsys.readouterr().err.strip().splitlines()
    if rc:
        assert len(err) == 1 and "'B-DATE'" in err[0] and "--drop-types DATE" in err[0], err
    else:
        m = read_manifest(tmp_path / "store")["adapters"]["n"]["metrics"]
        assert m["dev"]["dev_sentences"] == 5 and len(m["dev_curve"]) == 1


def test_an_ensemble_of_stacks_averages_their_logits():
    from madx.train.evaluate import logits_for
    from tests.helpers import NER_LABELS, add_random, tiny_madx

    m = tiny_madx("xlm-roberta", seed=3)
    for i, lang in enumerate(["sw", "rw"]):
        add_random(m, AdapterConfig.language(lang, reduction_factor=4), 20 + i)
    add_random(m, AdapterConfig.task("ner", "ner", NER_LABELS), 30)
    seqs = [[0, 5, 6, 7, 2], [0, 9, 10, 2], [0, 11, 2]]
    ens = (AdapterStack("sw", "ner"), AdapterStack("rw", "ner"))
    with torch.no_grad():
        got = logits_for(m, seqs, [ens, AdapterStack("sw", "ner"), ens], pad_id=1)
        sw = logits_for(m, seqs, [AdapterStack("sw", "ner")] * 3, pad_id=1)
        rw = logits_for(m, seqs, [AdapterStack("rw", "ner")] * 3, pad_id=1)
    for i in (0, 2):
        assert torch.allclose(got[i], (sw[i] + rw[i]) / 2, atol=1e-5)
        assert (sw[i] - rw[i]).abs().max() > 1e-3
    assert torch.allclose(got[1], sw[1], atol=1e-5)


def test_derive_drops_the_last_layer_and_keeps_the_rest_exactly(tmp_path):
    """MAD-X 2.0 from a trained adapter: the same weights without the last layer's adapter."""
    from madx.artifacts import save_to_store
    from tests.helpers import add_random

    bb = load_backbone(TINY)
    m = MadxModel(bb.model, bb.name)
    add_random(m, AdapterConfig.language("sw", reduction_factor=4), 7)
    save_to_store(m, "sw", tmp_path, extra={"metrics": {"language": "sw"}})
    assert main(["derive", "--store", str(tmp_path), "--backbone", TINY, "--source", "sw", "--name", "sw-v2",
                 "--save-dtype", "float32"]) == 0
    m2 = MadxModel(load_backbone(TINY).model, bb.name)
    load_store(m2, tmp_path)
    last = m2.num_layers - 1
    assert m2.configs["sw-v2"].bottleneck.leave_out == (last,) and str(last) not in m2.adapters["sw-v2"].layers
    src, dst = m2.adapters["sw"].state_dict(), m2.adapters["sw-v2"].state_dict()
    assert set(dst) < set(src) and all(torch.equal(src[k], dst[k]) for k in dst)
    assert read_manifest(tmp_path)["adapters"]["sw-v2"]["metrics"] == {"language": "sw", "derived_from": "sw",
                                                                       "leave_out": [last]}


def test_report_compares_rows_on_the_same_targets_with_their_spread(tmp_path, capsys):
    rows = [("(a)", 0, "yo", 30.0), ("(a)", 1, "yo", 32.0), ("(a)", 0, "sw", 60.0), ("(a)", 1, "sw", 62.0),
            ("(a)", 0, "ig-masakhaner", 40.0), ("(a)", 1, "ig-masakhaner", 40.0),  # (c) has no ig: left out
            ("(c)", 0, "yo", 36.0), ("(c)", 1, "yo", 34.0), ("(c)", 0, "sw", 58.0), ("(c)", 1, "sw", 58.0),
            ("(c)", 0, "en", 80.0),  # the source language is never a target
            ("(b)", 0, "yo", 20.0)]  # a row with no seen target yet: the others keep their seen mean
    out = tmp_path / "r.json"
    out.write_text(json.dumps([{"row": r, "seed": s, "task": "ner", "language": lang, "f1": f}
                               for r, s, lang, f in rows]))
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| row | yo | sw † | ig-masakhaner | en † | mean unseen | mean seen |" in text
    assert "| (a) | 31.0 ±1.0 | 61.0 ±1.0 | 40.0 ±0.0 | – | 31.0 ±1.0 | 61.0 ±1.0 |" in text
    assert "| (c) | 35.0 ±1.0 | 58.0 ±0.0 | – | 80.0 | 35.0 ±1.0 | 58.0 ±0.0 |" in text
    assert "| (b) | 20.0 | – | – | – | 20.0 | – |" in text
    assert "(c) − (a), mean over the unseen targets: +4.0 (per seed: +6.0, +2.0)" in text
    assert "(b) − (a), mean over the unseen targets: -10.0 (per seed: -10.0)" in text


@pytest.mark.parametrize("group, expected", [
    # both seeds of both rows have every target: means per seed, spread, difference to the first row
    ("two=yo,sw", ["Mean over two (2 targets: yo, sw):", "- (a): 46.0 ±1.0 (seeds 0, 1)",
                   "- (c): 47.0 ±0.0 (seeds 0, 1); − (a): +1.0 (per seed: +2.0, +0.0)"]),
    # a target no row has: said, and no row has a mean
    ("with-ha=yo,ha", ["Mean over with-ha (2 targets: yo, ha); not measured: ha:", "- (a): –", "- (c): –"]),
    # seed 1 of (c) lacks ig: (c) has seed 0 only, compared on that seed
    ("ig=yo,ig", ["- (a): 35.0 ±5.0 (seeds 0, 1)", "- (c): 38.0 (seeds 0); − (a): +8.0 (per seed: +8.0)"]),
])
def test_report_means_over_named_groups_of_targets(tmp_path, capsys, group, expected):
    rows = [("(a)", 0, "yo", 30.0), ("(a)", 1, "yo", 32.0), ("(a)", 0, "sw", 60.0), ("(a)", 1, "sw", 62.0),
            ("(a)", 0, "ig", 30.0), ("(a)", 1, "ig", 48.0), ("(c)", 0, "ig", 40.0),
            ("(c)", 0, "yo", 36.0), ("(c)", 1, "yo", 34.0), ("(c)", 0, "sw", 58.0), ("(c)", 1, "sw", 60.0)]
    out = tmp_path / "r.json"
    out.write_text(json.dumps([{"row": r, "seed": s, "task": "ner", "language": lang, "f1": f}
                               for r, s, lang, f in rows]))
    assert main(["report", str(out), "--group", group]) == 0
    text = capsys.readouterr().out
    for line in expected:
        assert line in text.splitlines(), (line, text)


@pytest.mark.parametrize("bad", ["noequals", "name=", "=yo,sw"])
def test_a_bad_group_is_refused_with_its_value(capsys, bad):
    with pytest.raises(SystemExit):
        main(["report", "r.json", "--group", bad])
    assert f"{bad!r} is not NAME=TARGET,TARGET,..." in capsys.readouterr().err


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_training_in_one_line_even_when_started_in_the_background(capsys, sig):
    """Was: a run started with `cmd &` inherits SIGINT ignored, so Ctrl-C's signal (and `pkill -INT`)
    did nothing, and SIGTERM killed it without a word."""
    import os
    import signal
    import time

    from madx.train.cli import stoppable

    ran = []

    def work():
        os.kill(os.getpid(), getattr(signal, sig))
        for _ in range(200):  # a training loop: the signal lands between two steps
            time.sleep(0.01)
        ran.append("finished")
        return 0

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell starts a background job
    try:
        assert stoppable(work) == 130
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # handlers restored afterwards
    finally:
        signal.signal(signal.SIGINT, before)
    assert ran == []
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"madx-train: stopped ({sig}); the last checkpoint is kept: the same command resumes"]
