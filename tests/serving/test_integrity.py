"""Issue 13 findings 4, 7, 8, 10, 13 and 14: adapter integrity, admin loads and what errors disclose.
Each test failed on the code before the fix (the finding's number is in its name)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading

import pytest

from madx.artifacts import ArtifactError, load_store
from serving.engine import RequestError

from .tiny_store import BACKBONE  # noqa: F401  (the store fixture's backbone)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def store(tiny_store, tmp_path):
    s = tmp_path / "store"
    shutil.copytree(tiny_store, s)
    return s


def manifest(store):
    return json.loads((store / "manifest.json").read_text())


def write_manifest(store, m):
    (store / "manifest.json").write_text(json.dumps(m))


def test_finding_4_admin_path_with_a_config_but_no_weights_is_a_422(make_engine, store):
    eng = make_engine(store=store)
    half = store / "half"
    half.mkdir()
    shutil.copy(store / "sw" / "adapter_config.json", half)
    with pytest.raises(RequestError) as e:
        run(eng.admin_load("sw", str(half)))
    assert e.value.status == 422 and "missing adapter.safetensors" in e.value.message


def test_finding_7_a_corrupt_reload_never_replaces_the_verified_copy(make_engine, store):
    eng = make_engine(store=store)
    before = run(eng.ner(["Rais wa Kenya alizungumza."], "sw", True))["results"][0]["tokens"]
    w = store / "sw" / "adapter.safetensors"
    w.write_bytes(w.read_bytes()[:-64] + b"\0" * 64)  # corrupt on disk while served
    with pytest.raises(RequestError) as e:
        run(eng.admin_load("sw", None))
    assert e.value.status == 422 and "sha256" in e.value.message
    assert "sw" in eng.languages()  # still served, from the verified in-memory copy
    after = run(eng.ner(["Rais wa Kenya alizungumza."], "sw", True))["results"][0]["tokens"]
    assert [t["score"] for t in after] == [t["score"] for t in before]


@pytest.mark.parametrize("name, source, message", [
    ("ner", "qa", "tasks.ner is 'ner': it needs a ner task adapter, this artifact is a qa task adapter"),
    ("ner", "sw", "tasks.ner is 'ner': it needs a ner task adapter, this artifact is a language adapter"),
    ("sw", "ner", "'sw' is a ner task adapter, but no task is mapped to it"),
])
def test_finding_8_admin_load_runs_the_startup_checks(make_engine, store, name, source, message):
    eng = make_engine(store=store)
    with pytest.raises(RequestError) as e:
        run(eng.admin_load(name, str(store / source)))
    assert e.value.status == 422 and message in e.value.message
    assert run(eng.ner(["Angela Merkel"], "en", False))["results"]  # nothing was swapped in


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_finding_10_a_fifo_never_blocks_the_model_thread(make_engine, store):
    eng = make_engine(store=store)
    d = store / "fifo"
    d.mkdir()
    os.mkfifo(d / "adapter_config.json")
    shutil.copy(store / "sw" / "adapter.safetensors", d)
    result = {}

    def load():
        try:
            run(eng.admin_load("sw", str(d)))
        except RequestError as e:
            result["e"] = e
    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "admin load blocked on a FIFO"
    assert result["e"].status == 422 and "not a regular file" in result["e"].message


@pytest.mark.parametrize("tamper, message", [
    (lambda m: m["adapters"]["sw"].update(sha256={}), "lists no sha256"),
    (lambda m: m["adapters"]["sw"]["sha256"].pop("adapter_config.json"), "are not in the manifest's sha256 list"),
    (lambda m: m["adapters"]["sw"].update(path="../outside"), "leaves the store"),
    (lambda m: m["adapters"]["sw"].update(path="/etc"), "leaves the store"),
])
def test_finding_13_integrity_gaps_are_refused(store, tamper, message):
    from madx.backbone import load_backbone
    from madx.model import MadxModel

    m = manifest(store)
    tamper(m)
    write_manifest(store, m)
    bb = load_backbone(BACKBONE)
    with pytest.raises(ArtifactError, match=message):
        load_store(MadxModel(bb.model, bb.name), store, ["sw"])


def test_finding_13_an_unlisted_file_in_an_artifact_is_refused(make_engine, store):
    (store / "sw" / "extra.json").write_text("{}")
    eng = make_engine(store=store)
    assert "sw" not in eng.languages() and "not in the manifest's sha256 list" in eng.cache.refused["sw"]


def test_finding_13_weights_are_parsed_from_the_bytes_that_were_hashed(make_engine, store, monkeypatch):
    """The file is read once: changing it after the hash can no longer change what is loaded."""
    import madx.artifacts as art

    reads = []
    real = art._read_regular
    monkeypatch.setattr(art, "_read_regular", lambda p, limit: reads.append(p.name) or real(p, limit))
    eng = make_engine(store=store)
    assert sorted(reads).count("adapter.safetensors") == len(eng.cache.entries)  # once per adapter, not twice


def test_finding_14_admin_paths_outside_the_roots_disclose_nothing(make_engine, store, tmp_path):
    eng = make_engine(store=store)
    msgs = set()
    for p in ("/etc", "/nonexistent/dir", str(tmp_path), "../../.."):
        with pytest.raises(RequestError) as e:
            run(eng.admin_load("sw", p))
        assert e.value.status == 422
        msgs.add(e.value.message)
    assert len(msgs) == 1 and "outside the directories admin loads may read" in msgs.pop()


def test_finding_14_public_refusals_carry_no_absolute_paths(make_engine, store):
    w = store / "de" / "adapter.safetensors"
    w.write_bytes(b"garbage")
    eng = make_engine(store=store)
    msg = eng.describe()["fallback"]["refused_adapters"]["de"]
    assert str(store) not in msg and str(store.resolve()) not in msg and "<store>/de" in msg
