"""Slow and idle clients against the single-process server (uvicorn as `madx-serve --no-ray` runs it),
with `limits.read_timeout_s` at 1.5 s. Each case failed on the code before the fix: every such
connection stayed open (and a trickled body got no answer) for as long as the client liked."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from serving.main import local_server

TIMEOUT_S = 1.5
WAIT_S = TIMEOUT_S + 8  # BODY_GRACE_S (5) and slack for a loaded 2-core machine


@pytest.fixture(scope="module")
def server(engine):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    limits = engine.s.limits.model_copy(update={"read_timeout_s": TIMEOUT_S})
    srv = local_server(engine, engine.s.model_copy(update={"port": port, "limits": limits}))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.02)
    yield port
    srv.should_exit = True
    thread.join(10)


def _idle(sock):
    pass


def _header_trickle(sock):
    sock.sendall(b"POST /v1/ner HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    for i in range(40):  # one header line every 0.3 s: 12 s if nothing cut it
        time.sleep(0.3)
        sock.sendall(b"X-Slow-%d: 1\r\n" % i)


def _body_trickle(sock):
    sock.sendall(b"POST /v1/ner HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100000\r\n\r\n{\"texts\": [\"")
    for _ in range(40):  # one byte every 0.3 s
        time.sleep(0.3)
        sock.sendall(b"a")


def _keep_alive_then_trickle(sock):  # a served request, then the next one's head trickled
    body = json.dumps({"texts": ["Paris"]}).encode()
    sock.sendall(b"POST /v1/ner HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    time.sleep(0.5)
    _header_trickle(sock)


@pytest.mark.parametrize("behave, answer", [
    (_idle, None),  # connected, never sends a byte
    (_header_trickle, None),
    (_body_trickle, b"HTTP/1.1 408"),
    (_keep_alive_then_trickle, b"HTTP/1.1 200"),
])
def test_a_slow_or_idle_connection_is_closed(server, behave, answer):
    sock = socket.create_connection(("127.0.0.1", server))
    sock.settimeout(WAIT_S)
    t0 = time.monotonic()
    writer = threading.Thread(target=lambda: _ignore_broken_pipe(behave, sock), daemon=True)
    writer.start()
    got = b""
    try:
        while chunk := sock.recv(65536):  # b"" once the server closed the connection
            got += chunk
    except TimeoutError:
        pytest.fail(f"the connection was still open after {WAIT_S} s; the server sent {got[:200]!r}")
    finally:
        sock.close()
    assert time.monotonic() - t0 < WAIT_S
    if answer is None:
        assert got == b""
    else:
        assert got.startswith(answer), got[:300]
    if answer == b"HTTP/1.1 408":
        assert b"limits.read_timeout_s" in got and b"connection: close" in got.lower()


def _ignore_broken_pipe(behave, sock):
    try:
        behave(sock)
    except OSError:  # the server closed the connection: what is tested
        pass


def test_a_prompt_client_is_served_over_one_connection_for_longer_than_the_timeout(server):
    """The deadline is per request: a keep-alive client sending requests promptly keeps being served."""
    with httpx.Client(base_url=f"http://127.0.0.1:{server}", timeout=120) as c:
        t0 = time.monotonic()
        codes = []
        while time.monotonic() - t0 < TIMEOUT_S * 2:
            codes.append(c.post("/v1/ner", json={"texts": ["Paris is big"] * 8}).status_code)
            time.sleep(0.2)
        big = c.post("/v1/ner", json={"texts": ["Paris is big. " * 1300] * 3})  # a big body sent at once is fine
    assert set(codes) == {200} and len(codes) >= 3 and big.status_code == 200


def test_a_client_that_disconnects_cancels_its_work(make_engine):
    """Was (single-process mode): a client that went away left its windows to be computed for no one
    (madx_cancelled_windows_total +0). Passes are slowed to 50 ms so the request is still queued."""
    eng = make_engine(batching={"max_batch_rows": 2, "max_wait_ms": 0})
    passes = []
    run = eng.batcher.run

    def slow(seqs, stacks):
        passes.append(len(seqs))
        time.sleep(0.05)
        return run(seqs, stacks)
    eng.batcher.run = slow
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = local_server(eng, eng.s.model_copy(update={"port": port}))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.02)

    def count(name, labels):
        return eng.m.registry.get_sample_value(name, labels) or 0
    try:
        before = count("madx_cancelled_windows_total", {"replica": "local"})
        gone_before = count("madx_requests_total", {"endpoint": "ner", "status": "499"})
        body = json.dumps({"texts": [f"Rais wa Kenya {i}." for i in range(40)], "language": "sw"}).encode()
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/ner HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        while not passes:
            time.sleep(0.01)
        sock.close()  # gone after the first pass of 20
        end = time.monotonic() + 20
        while (eng.batcher.queued or eng.batcher._round) and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.2)
        cancelled = count("madx_cancelled_windows_total", {"replica": "local"}) - before
        gone = count("madx_requests_total", {"endpoint": "ner", "status": "499"}) - gone_before
    finally:
        srv.should_exit = True
        thread.join(10)
    assert cancelled > 0 and sum(passes) + cancelled <= 40 and sum(passes) < 40, (passes, cancelled)
    assert gone == 1
