"""Admin operations in Ray mode are applied or reported per replica, never left
silently diverged; a profile file that breaks after an op does not turn the applied op into a 500.
Serve logic without a cluster: the deployment classes run with fake handles."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from serving.deployments import Backbone, Control, RayBackend, settings_payload
from serving.engine import RequestError
from serving.settings import load_settings

from .tiny_store import BACKBONE


class Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        async def call():
            return self.fn(*args)
        return call()


class Handle:
    """A deployment handle stand-in: ``handle.method.remote(...)`` awaits ``obj.method(...)``."""

    def __init__(self, obj):
        self.obj = obj

    def __getattr__(self, name):
        return Method(getattr(self.obj, name))


@pytest.fixture
def store(tiny_store, tmp_path):
    s = tmp_path / "store"
    shutil.copytree(tiny_store, s)
    return s


def test_an_applied_op_is_not_a_500_when_the_profiles_break_afterwards(make_engine, store):
    eng = make_engine(store=store)
    (store / "_langid" / "profiles.json").write_text("{broken")
    assert asyncio.run(eng.admin_unload("de")) == {"unloaded": "de"}  # was: 500 after it was applied
    assert "de" not in eng.languages() and eng.detector is not None


def test_a_replica_that_cannot_apply_an_op_reports_it_and_becomes_unhealthy(store, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get_runtime_context", lambda: (_ for _ in ()).throw(RuntimeError("no Ray here")))
    control = Control.func_or_class()
    control.record({"op": "load", "name": "sw", "path": "/nowhere/outside"})  # refused by every replica
    control.record({"op": "unload", "name": "de"})
    settings = load_settings(env={}, backbone=BACKBONE, adapter_store=str(store))

    async def go():
        cls = Backbone.func_or_class
        b = cls.__new__(cls)
        await b.__init__(settings_payload(settings), Handle(control))
        b._sync.cancel()  # driven by hand here
        await b.sync_once()
        b._sync = asyncio.get_running_loop().create_future()  # a sync loop that is alive
        return b
    b = asyncio.run(go())
    assert b.version == 2 and "de" not in b.engine.languages()  # the log went on: not retried forever
    assert list(b.failed) == [1] and "outside the directories admin loads may read" in b.failed[1]
    with pytest.raises(RuntimeError, match=r"could not apply admin ops \[1\]"):
        b.check_health()  # Serve replaces it: it starts again from the store and the log
    p = control.progress(1)
    assert p["failed"] == {b.replica: b.failed[1]} and p["applied"] == 0 and p["live"] == 1


def test_the_admin_call_reports_replicas_that_could_not_apply_it():
    class FakeBackbone:
        def admin(self, op):
            return {"ok": {"loaded": op["name"], "kind": "language", "source": "store", "version": 7}}

    class FakeControl:
        def progress(self, version):
            return {"live": 2, "applied": 1, "failed": {"replica-b": "sha256 ... does not match"}}

    backend = RayBackend(Handle(FakeBackbone()), Handle(FakeControl()))
    with pytest.raises(RequestError) as e:
        asyncio.run(backend.admin_load("sw", None))
    assert e.value.status == 502 and "applied on 1 of 2 replicas" in e.value.message and "replica-b" in e.value.message
