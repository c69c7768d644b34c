from __future__ import annotations

import pytest

from serving.engine import Engine
from serving.settings import load_settings

from .tiny_store import BACKBONE, make_store


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="session")
def make_engine(tiny_store):
    def make(**over):
        # every precision runs here whatever the CPU (its speed is not what these tests check)
        over.setdefault("allow_slow_precision", True)
        return Engine(load_settings(env={}, backbone=BACKBONE, adapter_store=str(over.pop("store", tiny_store)), **over))
    return make


@pytest.fixture(scope="session")
def engine(make_engine):
    return make_engine()
