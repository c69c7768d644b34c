"""`madx-serve` start-up: bad settings and bad stores stop it with a clear message, exit code 2."""

from __future__ import annotations

import pytest

from serving.main import main

from .tiny_store import BACKBONE


@pytest.mark.parametrize("env, message", [
    ({"MADX_ADAPTER_STORE": "/nonexistent/store"}, "adapter store '/nonexistent/store' is not a readable directory"),
    ({"MADX_PORT": "0"}, "port: Input should be greater than or equal to 1 (got 0)"),
    ({"MADX_TASKS": '{"ner": "nope"}'}, "none of the task adapters {'ner': 'nope'} is served"),
])
def test_startup_errors(monkeypatch, capsys, tiny_store, env, message):
    monkeypatch.setenv("MADX_BACKBONE", BACKBONE)
    monkeypatch.setenv("MADX_ADAPTER_STORE", str(tiny_store))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["--check"]) == 2
    assert message in capsys.readouterr().err


def test_check_ok(monkeypatch, capsys, tiny_store):
    monkeypatch.setenv("MADX_BACKBONE", BACKBONE)
    monkeypatch.setenv("MADX_ADAPTER_STORE", str(tiny_store))
    assert main(["--check"]) == 0
    assert "languages ['de', 'en', 'sw']" in capsys.readouterr().out
