"""Adapter integrity, admin loads and what errors disclose.
Each test failed on the code before the fix (the finding's number is in its name)."""

from __future__ import annotations

import asyncio
import contextlib
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


async def drained(eng, seconds: float = 2.0) -> None:
    """Wait (on the engine's loop) until the batcher has dropped every draining adapter version."""
    for _ in range(int(seconds / 0.01)):
        if not eng.cache.retired:
            return
        await asyncio.sleep(0.01)


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
    ("sw", "ner", "'sw' is a served language adapter; a ner task adapter cannot take its name"),
])
def test_finding_8_admin_load_runs_the_startup_checks(make_engine, store, name, source, message):
    eng = make_engine(store=store)
    with pytest.raises(RequestError) as e:
        run(eng.admin_load(name, str(store / source)))
    assert e.value.status == 422 and message in e.value.message
    assert run(eng.ner(["Angela Merkel"], "en", False))["results"]  # nothing was swapped in


def test_an_admin_load_may_add_a_task_adapter_of_a_served_task_which_stacks_then_name(make_engine, store):
    """Was refused ('no task is mapped to it'), though a store holding the same adapter serves it at start-up."""
    eng = make_engine(store=store)
    run(eng.admin_load("ner-custom", str(store / "ner")))
    res = run(eng.ner(["Rais wa Kenya alizungumza."], "sw", False, {"route": "madx@ner-custom"}))["results"][0]
    assert res["stack"] == {"language": "sw", "task": "ner-custom"}


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
    assert "sw" not in eng.languages() and "'extra.json' are not part of an adapter artifact" in eng.cache.refused["sw"]


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
    with pytest.raises(RequestError) as e:  # found by the admin fuzz: was a 500 (ValueError from resolve())
        run(eng.admin_load("sw", "sw\0x"))
    assert e.value.status == 422 and "NUL" in e.value.message
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


def test_finding_5_unload_under_load_fails_no_request(make_engine, store):
    """Was: 37-38 of 40 requests 500 (queued rows hit KeyError, and one exception went to every row)."""
    eng = make_engine(store=store, batching={"max_wait_ms": 20})

    async def go():
        reqs = [eng.ner([f"Rais wa Kenya alizungumza jana {i}."], "sw" if i % 2 else "en", False) for i in range(40)]
        tasks = [asyncio.ensure_future(r) for r in reqs]
        await asyncio.sleep(0)  # every request is routed and queued before the unload runs
        unload = asyncio.ensure_future(eng.admin_unload("sw"))
        out = await asyncio.gather(*tasks, return_exceptions=True), await unload
        await drained(eng)  # the batcher drops the drained adapter after its round
        return out
    results, _ = run(go())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert "sw" not in eng.languages() and not eng.cache.retired  # and it is gone once drained
    assert run(eng.ner(["Habari"], "sw", False))["results"][0]["stack"]["language"] is None


def test_finding_6_a_batch_never_needs_more_adapters_than_the_cache_holds(make_engine, store):
    """Was: with max_device_adapters below the stacks of one batch, every request of it got 500."""
    eng = make_engine(store=store, cache={"max_device_adapters": 3}, batching={"max_wait_ms": 50})
    texts = {"en": "The president spoke.", "sw": "Rais alizungumza.", "de": "Der Präsident sprach."}

    async def together():
        return await asyncio.gather(*(eng.ner([t], lang, True) for lang, t in texts.items()))
    burst = run(together())
    alone = [run(eng.ner([t], lang, True)) for lang, t in texts.items()]
    for b, a in zip(burst, alone, strict=True):
        assert [x["score"] for x in b["results"][0]["tokens"]] == pytest.approx(
            [x["score"] for x in a["results"][0]["tokens"]], abs=1e-4)


def test_finding_5_an_error_in_one_stack_fails_only_its_requests(make_engine, store):
    eng = make_engine(store=store, batching={"max_wait_ms": 50})
    real = eng._run

    def broken_for_de(seqs, stacks):
        if any(s.language == "de" for s in stacks):
            raise RuntimeError("the de adapter is broken")
        return real(seqs, stacks)
    eng.batcher.run = broken_for_de

    async def go():
        return await asyncio.gather(eng.ner(["The president spoke."], "en", False),
                                    eng.ner(["Der Präsident sprach."], "de", False), return_exceptions=True)
    en, de = run(go())
    assert not isinstance(en, BaseException) and en["results"][0]["stack"]["language"] == "en"
    assert isinstance(de, RuntimeError)


def test_finding_11_a_big_request_shares_the_model_with_a_small_one(make_engine, store):
    """Was: the batcher took the whole queue at once, so a 1-window request waited for every window
    of a big request queued before it."""
    eng = make_engine(store=store, batching={"max_batch_rows": 4, "max_wait_ms": 20})
    passes: list[set[int]] = []
    real = eng.batcher._forward

    def spy(rows):
        passes.append({r.request for r in rows})
        return real(rows)
    eng.batcher._forward = spy

    async def go():
        big = asyncio.ensure_future(eng.ner([f"Rais wa Kenya alizungumza na waandishi {i}." for i in range(60)], "sw"))
        await asyncio.sleep(0)
        small = asyncio.ensure_future(eng.ner(["Angela Merkel visited Nairobi."], "en"))
        return await asyncio.gather(big, small)
    run(go())
    big_id, small_id = min(min(p) for p in passes), max(max(p) for p in passes)
    first_small = next(i for i, p in enumerate(passes) if small_id in p)
    last_big = max(i for i, p in enumerate(passes) if big_id in p)
    assert first_small <= 2 < last_big, passes  # within the first rounds, long before the big request is done


def test_finding_11_cancelled_requests_release_their_queued_windows(make_engine, store):
    eng = make_engine(store=store, batching={"max_batch_rows": 2, "max_wait_ms": 200})

    def released():
        return eng.m.registry.get_sample_value("madx_cancelled_windows_total", {"replica": "local"}) or 0

    async def go():
        before = released()
        t = asyncio.ensure_future(eng.ner([f"Rais wa Kenya {i}." for i in range(30)], "sw"))
        for _ in range(100):
            await asyncio.sleep(0.005)
            if eng.batcher.queued:
                break
        queued = eng.batcher.queued
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
        return queued, eng.batcher.queued, released() - before
    queued, after, count = run(go())
    assert queued > 0 and after == 0 and count == queued


def test_finding_7_rows_queued_before_a_reload_keep_the_version_they_were_admitted_with(make_engine, store):
    """A reload (here: 'sw' replaced by other weights) applies to new requests only."""
    text = "Rais wa Kenya alizungumza na waandishi wa habari."
    other = store / "sw-other"
    shutil.copytree(store / "de", other)  # different weights, a valid language adapter
    eng = make_engine(store=store, batching={"max_wait_ms": 300})
    old = run(eng.ner([text], "sw", True))["results"][0]["tokens"]

    async def go():
        before = asyncio.ensure_future(eng.ner([text], "sw", True))
        await asyncio.sleep(0.05)  # queued, waiting for its batch to fill
        assert eng.batcher.queued
        await eng.admin_load("sw", str(other))
        after = asyncio.ensure_future(eng.ner([text], "sw", True))
        out = await asyncio.gather(before, after)
        await drained(eng)  # the kept old version leaves once nothing needs it
        return out
    before, after = run(go())
    scores = lambda r: [t["score"] for t in r["results"][0]["tokens"]]  # noqa: E731
    assert scores(before) == pytest.approx([t["score"] for t in old], abs=1e-5)  # the version it was admitted with
    assert scores(after) != pytest.approx(scores(before), abs=1e-5)  # the new version
    assert not eng.cache.retired and "sw" in eng.languages()
