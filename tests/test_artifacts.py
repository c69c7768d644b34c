"""Adapter artifacts: round trips, the store manifest, and the errors promised for bad files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from madx.adapterhub import export_adapterhub, import_adapterhub
from madx.artifacts import ArtifactError, load_adapter, load_store, read_manifest, save_adapter, save_to_store
from madx.config import AdapterConfig, AdapterStack
from tests.helpers import NER_LABELS, TOL, add_random, batch, tiny_madx

STACKS = [AdapterStack("sw", "ner"), AdapterStack(None, "qa"), AdapterStack("sw", "qa")]


def source():
    m = tiny_madx("xlm-roberta", seed=2)
    add_random(m, AdapterConfig.language("sw", leave_out=(1,)), 1)
    add_random(m, AdapterConfig.task("ner", "ner", NER_LABELS), 2)
    add_random(m, AdapterConfig.task("qa", "qa"), 3)
    return m


def outputs(m):
    ids, mask = batch(m.backbone.config.vocab_size, [9, 6, 4], seed=3, pad_id=1)
    with torch.no_grad():
        return m(ids, mask, STACKS)


def assert_same(a, b):
    assert (a[0] - b[0]).abs().max() <= TOL
    for x, y in zip(a[1], b[1], strict=True):
        assert (x - y).abs().max() <= TOL


def fresh():
    return tiny_madx("xlm-roberta", seed=2)


def test_store_round_trip(tmp_path):
    m = source()
    for n in ("sw", "ner", "qa"):
        save_to_store(m, n, tmp_path, training={"steps": 3}, extra={"metrics": {"f1": 0.5}})
    manifest = read_manifest(tmp_path)
    assert set(manifest["adapters"]) == {"sw", "ner", "qa"}
    assert manifest["adapters"]["ner"]["metrics"] == {"f1": 0.5}
    assert len(manifest["adapters"]["sw"]["sha256"]["adapter.safetensors"]) == 64
    m2 = fresh()
    assert load_store(m2, tmp_path) == {}
    assert m2.configs == m.configs
    assert_same(outputs(m), outputs(m2.eval()))


def test_adapterhub_safetensors_round_trip(tmp_path):
    m = source()
    for n in ("sw", "ner", "qa"):
        export_adapterhub(m, n, tmp_path / n, model_class="XLMRobertaAdapterModel")
    m2 = fresh()
    for n in ("sw", "ner", "qa"):
        import_adapterhub(m2, tmp_path / n)
    assert m2.configs["sw"].bottleneck.leave_out == (1,)
    assert m2.configs["ner"].head.labels == NER_LABELS
    assert_same(outputs(m), outputs(m2.eval()))


def test_pickle_import_needs_opt_in_and_legacy_names_convert(tmp_path):
    """A v1 (adapter-transformers) language adapter saved as pytorch_adapter.bin with legacy key names."""
    m = source()
    export_adapterhub(m, "sw", tmp_path / "sw", model_class="XLMRobertaAdapterModel")
    d = tmp_path / "sw"
    legacy = {k.replace("output.adapters.", "output.layer_text_lang_adapters.")
              .replace("invertible_adapters.", "invertible_lang_adapters."): v
              for k, v in load_file(str(d / "adapter.safetensors")).items()}
    (d / "adapter.safetensors").unlink()
    torch.save(legacy, d / "pytorch_adapter.bin")
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["config"] = "pfeiffer+inv"  # v1 named config
    cfg["type"] = "text_lang"
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="pickle file and is not loaded by default.*--allow-pickle"):
        import_adapterhub(fresh(), d)
    m2 = fresh()
    import_adapterhub(m2, d, allow_pickle=True)
    ids, mask = batch(m.backbone.config.vocab_size, [8], seed=1, pad_id=1)
    with torch.no_grad():
        a = m.encode(ids, mask, [AdapterStack("sw")])
        b = m2.eval().encode(ids, mask, [AdapterStack("sw")])
    assert (a - b).abs().max() <= TOL


def test_our_loader_refuses_pickle_only_dirs(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    torch.save({}, tmp_path / "pytorch_adapter.bin")
    with pytest.raises(ArtifactError, match="only pickle weights \\(pytorch_adapter.bin\\); pickle is never loaded"):
        load_adapter(fresh(), tmp_path)


def test_sha256_mismatch_refuses_only_that_adapter(tmp_path):
    m = source()
    for n in ("sw", "ner", "qa"):
        save_to_store(m, n, tmp_path)
    w = tmp_path / "ner" / "adapter.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ArtifactError, match="sha256 .* does not match the store manifest"):
        load_store(fresh(), tmp_path)
    m2 = fresh()
    errors = load_store(m2, tmp_path, strict=False)
    assert list(errors) == ["ner"] and "does not match the store manifest" in errors["ner"]
    assert set(m2.configs) == {"sw", "qa"}


def test_backbone_mismatch_names_the_field(tmp_path):
    m = source()
    save_adapter(m, "sw", tmp_path / "sw")
    other = tiny_madx("xlm-roberta", seed=2, hidden_size=48)
    with pytest.raises(ArtifactError, match="made for hidden_size=32 .* has hidden_size=48"):
        load_adapter(other, tmp_path / "sw")


def test_tensor_shape_mismatch_names_the_tensor(tmp_path):
    m = source()
    d = save_adapter(m, "sw", tmp_path / "sw")
    t = load_file(str(d / "adapter.safetensors"))
    t["layers.0.down.weight"] = torch.zeros(8, 32)
    save_file(t, str(d / "adapter.safetensors"))
    m2 = fresh()
    msg = "tensor 'layers.0.down.weight' of adapter 'sw' has shape \\(8, 32\\).*needs \\(16, 32\\)"
    with pytest.raises(ArtifactError, match=msg):
        load_adapter(m2, d)
    assert "sw" not in m2.configs  # nothing half-registered


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda c: c.update(format="other"), "format 'other' is not 'madx-serve/adapter@1'"),
        (lambda c: c.pop("kind"), "missing field 'kind'"),
        (lambda c: c.update(kind="domain"), "adapter kind 'domain' is unknown"),
        (lambda c: c["bottleneck"].update(non_linearity="softmax"), "non_linearity 'softmax' is not supported"),
    ],
)
def test_bad_config_messages(tmp_path, mutate, message):
    m = source()
    d = save_adapter(m, "sw", tmp_path / "sw")
    cfg = json.loads((d / "adapter_config.json").read_text())
    mutate(cfg)
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match=message):
        load_adapter(fresh(), d)


@pytest.mark.parametrize(
    "setting,value",
    [("original_ln_before", False), ("mh_adapter", True), ("ln_after", True), ("is_parallel", True)],
)
def test_non_madx_adapterhub_configs_are_refused(tmp_path, setting, value):
    m = source()
    d = export_adapterhub(m, "sw", tmp_path / "sw")
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["config"][setting] = value
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match=f"{setting}={value!r} is not the MAD-X"):
        import_adapterhub(fresh(), d)


def test_cli_import_requires_explicit_pickle_opt_in(tmp_path, capsys):
    from madx.cli import main

    m = tiny_madx("bert", seed=0)
    add_random(m, AdapterConfig.task("ner", "ner", NER_LABELS), 4)
    src = export_adapterhub(m, "ner", tmp_path / "hub-ner")
    for stem in ("adapter", "model_head"):  # re-save as pickle, the old AdapterHub default
        torch.save(load_file(str(src / f"{stem}.safetensors")),
                   src / ("pytorch_adapter.bin" if stem == "adapter" else "pytorch_model_head.bin"))
        (src / f"{stem}.safetensors").unlink()
    store = tmp_path / "store"
    assert main(["import-adapterhub", str(src), "--store", str(store), "--backbone", "tiny-bert-0"]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert main(["import-adapterhub", str(src), "--store", str(store), "--backbone", "tiny-bert-0",
                 "--allow-pickle", "--name", "ner-en"]) == 0
    m2 = tiny_madx("bert", seed=0)
    assert load_store(m2, store) == {}
    ids, mask = batch(m.backbone.config.vocab_size, [7], seed=8)
    with torch.no_grad():
        a = m(ids, mask, [AdapterStack(None, "ner")])[1][0]
        b = m2.eval()(ids, mask, [AdapterStack(None, "ner-en")])[1][0]
    assert (a - b).abs().max() <= TOL


def test_a_manifest_writer_never_loses_an_adapter_added_while_it_worked(tmp_path):
    # madx-train evidence read the manifest, measured for minutes and wrote it back with its routing:
    # a task adapter a training run had added meanwhile vanished from the store
    import threading
    import time

    from madx.artifacts import update_manifest

    model = tiny_madx()
    add_random(model, AdapterConfig.language("sw", reduction_factor=4), seed=1)
    save_to_store(model, "sw", tmp_path)
    read_done, added = threading.Event(), threading.Event()

    def slow_writer(m):  # holds what it read while another writer adds an adapter
        read_done.set()
        time.sleep(0.3)
        m["routing"] = {"evidence": {}}

    t = threading.Thread(target=update_manifest, args=(tmp_path, slow_writer))
    t.start()
    read_done.wait()
    add_random(model, AdapterConfig.language("yo", reduction_factor=4), seed=2)
    threading.Thread(target=lambda: (save_to_store(model, "yo", tmp_path), added.set())).start()
    t.join()
    assert added.wait(10)
    m = read_manifest(tmp_path)
    assert sorted(m["adapters"]) == ["sw", "yo"] and m["routing"] == {"evidence": {}}
