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


def test_check_shows_progress_and_runs_one_request_per_task(monkeypatch, capsys, tiny_store):
    monkeypatch.setenv("MADX_BACKBONE", BACKBONE)
    monkeypatch.setenv("MADX_ADAPTER_STORE", str(tiny_store))
    assert main(["--check"]) == 0
    out = capsys.readouterr().out
    for step in ("[1/3] settings ok", "[2/3] loading the backbone", "[3/3] one request per task", "ner: ", "qa: "):
        assert step in out, out


@pytest.fixture
def busy_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


@pytest.mark.parametrize("mode", [["--no-ray"], []], ids=["no-ray", "ray"])
def test_port_in_use_is_one_line_before_anything_loads(monkeypatch, capsys, tiny_store, busy_port, mode):
    """Was: a 39-line Ray traceback (Ray mode); the 'on http://...' line printed before the bind error (--no-ray)."""
    import serving.engine

    monkeypatch.setenv("MADX_BACKBONE", BACKBONE)
    monkeypatch.setenv("MADX_ADAPTER_STORE", str(tiny_store))
    monkeypatch.setattr(serving.engine, "Engine", lambda *a, **k: pytest.fail("loaded the model before the port check"))
    assert main([*mode, "--host", "127.0.0.1", "--port", str(busy_port)]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    lines = cap.err.strip().splitlines()
    assert lines == [f"error: port {busy_port} on 127.0.0.1 is already in use (another madx-serve or Ray Serve?); "
                     f"stop it or choose another port with --port or MADX_PORT"], cap.err


def test_ray_that_cannot_start_is_one_line(monkeypatch, capsys, tiny_store):
    import ray

    monkeypatch.setenv("MADX_BACKBONE", BACKBONE)
    monkeypatch.setenv("MADX_ADAPTER_STORE", str(tiny_store))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # nothing listens there

    def refuse(*a, **k):
        raise ConnectionError("Could not find any running Ray instance.\nPlease specify the one to connect to.")
    monkeypatch.setattr(ray, "init", refuse)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert main(["--host", "127.0.0.1", "--port", str(free)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: Ray could not start (ConnectionError: Could not find any running Ray instance.); "
                   "try --no-ray for one process"], err
