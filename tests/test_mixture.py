"""Multi-source, target-ready task training (madx/train/mixture.py, multisource_command.py): languages
drawn with the stated temperature shares, adapters with the stated own/target/none shares, every
draw a function of (seed, step), and a batch under a swapped-in adapter trained through that
adapter's weights."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from madx.artifacts import read_manifest
from madx.config import AdapterConfig, AdapterStack
from madx.train.mixture import Mixture, MixtureConfig, language_probabilities

FIX = Path(__file__).parent / "fixtures"
TINY = "tiny-xlmr-0+xlmr"
SIZES = {"en": 4000, "sw": 400, "qu": 40}


def lengths(sizes=SIZES):
    return {k: [10 + i % 7 for i in range(n)] for k, n in sizes.items()}


@pytest.mark.parametrize("temperature, expected", [
    (1.0, {"en": 4000 / 4440, "sw": 400 / 4440, "qu": 40 / 4440}),  # proportional to size
    (2.0, {"en": 63.25 / 89.57, "sw": 20.0 / 89.57, "qu": 6.325 / 89.57}),  # sqrt of size
    (1e6, {"en": 1 / 3, "sw": 1 / 3, "qu": 1 / 3}),  # uniform
])
def test_temperature_gives_the_stated_language_shares(temperature, expected):
    p = language_probabilities(SIZES, temperature)
    assert p == pytest.approx(expected, abs=1e-3)
    m = Mixture(lengths(), {k: k for k in SIZES}, [], MixtureConfig(temperature), 8, seed=0, steps=20_000)
    got = Counter(m(s).language for s in range(20_000))
    for k, v in expected.items():  # 20k draws: 3 standard errors of a share are under 0.011
        assert got[k] / 20_000 == pytest.approx(v, abs=0.011), (k, got)


@pytest.mark.parametrize("target, none", [(0.0, 0.0), (0.25, 0.25), (0.5, 0.0), (0.0, 1.0)])
def test_adapter_shares_and_targets(target, none):
    m = Mixture(lengths(), {k: k for k in SIZES}, ["zu", "xh"], MixtureConfig(3.0, target, none), 8, seed=1, steps=20_000)
    draws = [m(s) for s in range(20_000)]
    kinds = Counter(d.kind for d in draws)
    for kind, share in zip(("own", "target", "none"), (1 - target - none, target, none), strict=True):
        assert kinds[kind] / 20_000 == pytest.approx(share, abs=0.011)
    for d in draws:
        assert d.adapter == {"own": d.language, "none": None}.get(d.kind, d.adapter)
        assert d.kind != "target" or d.adapter in ("zu", "xh")
    if target:
        assert Counter(d.adapter for d in draws if d.kind == "target").keys() == {"zu", "xh"}


def test_draws_are_a_function_of_seed_and_step_and_walk_each_language_in_order():
    a = Mixture(lengths(), {k: k for k in SIZES}, ["zu"], MixtureConfig(2.0, 0.2, 0.2), 8, seed=3, steps=600)
    b = Mixture(lengths(), {k: k for k in SIZES}, ["zu"], MixtureConfig(2.0, 0.2, 0.2), 8, seed=3, steps=600)
    assert [b(s) for s in range(599, -1, -1)][::-1] == [a(s) for s in range(600)]  # any order: a resumed run
    assert [a(s) for s in range(600)] != [Mixture(lengths(), {k: k for k in SIZES}, ["zu"], MixtureConfig(2.0, 0.2, 0.2),
                                                  8, seed=4, steps=600)(s) for s in range(600)]
    # one language's batches in draw order: a full epoch covers each of its windows once
    sw = [a(s).rows for s in range(600) if a(s).language == "sw"][:400 // 8]
    assert sorted(i for rows in sw for i in rows) == list(range(400))


@pytest.mark.parametrize("cfg, message", [
    (dict(temperature=0), "temperature must be > 0"),
    (dict(target_share=0.7, none_share=0.4), "target_share + none_share must be <= 1"),
    (dict(none_share=-0.1), "none_share must be in [0, 1]"),
])
def test_bad_mixtures_say_why(cfg, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+").replace("[", r"\[").replace("]", r"\]")):
        MixtureConfig(**cfg)


def test_a_batch_under_a_swapped_in_adapter_runs_through_that_adapters_weights():
    from madx.backbone import load_backbone
    from madx.model import MadxModel
    from madx.train.data import read_conll
    from madx.train.task_steps import mixture_step_fn, ner_loss, ner_train_features
    from madx.train.train_commands import NER_LABELS
    from tests.helpers import randomize_

    bb = load_backbone(TINY)
    model, tok = MadxModel(bb.model, bb.name).eval(), bb.tokenizer
    for i, lang in enumerate(["en", "zu", "xh"]):
        randomize_(model.add_adapter(AdapterConfig.language(lang, reduction_factor=4)), 10 + i)
    randomize_(model.add_adapter(AdapterConfig.task("ner", "ner", NER_LABELS, reduction_factor=4)), 20)
    feats = {"en": ner_train_features(tok, read_conll(FIX / "ner_en.conll"), NER_LABELS, 32)}
    mix = Mixture({"en": [len(f.input_ids) for f in feats["en"]]}, {"en": "en"}, ["zu", "xh"],
                  MixtureConfig(1.0, 0.5, 0.25), 2, seed=0, steps=40)
    step_fn = mixture_step_fn(model, tok, feats, mix, "ner", ner_loss)
    seen = set()
    with torch.no_grad():
        for s in range(40):
            d = mix(s)
            rows = [feats["en"][i] for i in d.rows]
            got = step_fn(s)[0]
            assert torch.equal(got, ner_loss(model, tok, rows, AdapterStack(d.adapter, "ner"))[0])
            others = [a for a in ("en", "zu", "xh", None) if a != d.adapter]
            assert all(not torch.equal(got, ner_loss(model, tok, rows, AdapterStack(a, "ner"))[0]) for a in others)
            seen.add(d.adapter)
    assert seen == {"en", "zu", "xh", None}


def test_cli_multisource_target_ready_end_to_end(tmp_path, capsys):
    from madx.train.cli import main

    store = tmp_path / "store"
    common = ["--store", str(store), "--backbone", TINY, "--no-progress", "--batch-size", "2", "--max-len", "32"]
    assert main(["mlm-head", *common, "--text", str(FIX / "text_sw.txt"), "--steps", "2"]) == 0
    for lang in ("en", "sw", "zu"):
        assert main(["lang", *common, "--language", lang, "--text", str(FIX / "text_sw.txt"), "--steps", "2"]) == 0
    ner = FIX / "ner_en.conll"
    argv = ["task", *common, "--task", "ner", "--name", "ner-multi", "--train-lang", f"en={ner}", f"sw={ner}",
            "--temperature", "2", "--target-languages", "zu", "--target-share", "0.3", "--none-share", "0.2",
            "--dev-lang", f"zu={ner}", f"sw={ner}", "--steps", "6", "--eval-every", "3", "--drop-types", "DATE"]
    assert main(argv) == 0
    m = read_manifest(store)["adapters"]["ner-multi"]["metrics"]
    ms = m["multisource"]
    assert ms["shares"] == pytest.approx({"own": 0.5, "target": 0.3, "none": 0.2}) and ms["targets"] == ["zu"]
    assert ms["windows"]["en"] == ms["windows"]["sw"] > 0 and ms["p_language"] == {"en": 0.5, "sw": 0.5}
    assert len(m["dev_curve"]) == 2 and set(m["dev"]["dev"]) == {"zu", "sw"}
    # target-ready training can start from the adapter trained alone: at lr 0 it stays that adapter
    from safetensors.torch import load_file

    assert main([*argv[:argv.index("--steps")], "--steps", "1", "--name", "ner-warm", "--init-from", "ner-multi",
                 "--lr", "0"]) == 0
    warm, src = (load_file(store / n / "adapter.safetensors") for n in ("ner-warm", "ner-multi"))
    assert len(warm) == len(src) > 0 and all(torch.equal(a, b) for a, b in zip(
        (warm[k] for k in sorted(warm)), (src[k] for k in sorted(src)), strict=True))
    assert read_manifest(store)["adapters"]["ner-warm"]["metrics"]["init_from"] == "ner-multi"
    with pytest.raises(SystemExit, match="same architecture needed"):
        main([*argv[:argv.index("--steps")], "--steps", "1", "--name", "ner-warm2", "--init-from", "ner-multi",
              "--reduction-factor", "2"])
    # an adapter the store lacks is named before anything is trained
    with pytest.raises(SystemExit, match=r"no language adapter \['xh'\]"):
        main([*argv[:-6], "--name", "ner-x", "--target-languages", "xh", "--steps", "2"])
    with pytest.raises(SystemExit, match="leave out --train"):
        main([*argv, "--train", str(ner)])


def test_cli_multisource_qa_keeps_a_language_s_half_and_holds_out_dev_contexts(tmp_path, capsys):
    """QA multi-source: ``--train-half sw=test`` trains on only the contexts of that half (by hash, as
    eval --context-half), and ``--dev-fraction`` holds out each language's contexts as its dev set."""
    from madx.train.cli import main

    store = tmp_path / "store"
    common = ["--store", str(store), "--backbone", TINY, "--no-progress", "--batch-size", "2", "--max-len", "64"]
    assert main(["mlm-head", *common, "--text", str(FIX / "text_sw.txt"), "--steps", "2"]) == 0
    for lang in ("en", "sw"):
        assert main(["lang", *common, "--language", lang, "--text", str(FIX / "text_sw.txt"), "--steps", "2"]) == 0
    qa = FIX / "qa.json"  # two contexts: the first in the dev half (and the 50 % dev split), the second in neither
    argv = ["task", *common, "--task", "qa", "--name", "qa-multi", "--train-lang", f"en={qa}", f"sw={qa}",
            "--train-half", "sw=test", "--dev-fraction", "0.5", "--none-share", "1.0", "--dev-adapters", "none",
            "--stride", "16", "--steps", "4", "--eval-every", "2"]
    assert main(argv) == 0
    m = read_manifest(store)["adapters"]["qa-multi"]["metrics"]
    assert m["dev"]["dev_questions"] == {"en": 2}  # sw's one context left is a training context
    assert m["multisource"]["windows"]["en"] == m["multisource"]["windows"]["sw"] > 0  # both train on the second
    assert len(m["dev_curve"]) == 2
    with pytest.raises(SystemExit, match="no training question left"):  # sw's dev-half context goes to dev
        main([*argv[:argv.index("--train-half")], "--train-half", "sw=dev", *argv[argv.index("--dev-fraction"):],
              "--name", "qa-x"])
    with pytest.raises(SystemExit, match="must look like LANG=dev"):
        main([*argv, "--name", "qa-y", "--train-half", "sw=half"])
