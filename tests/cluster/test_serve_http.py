"""Ray Serve end to end over HTTP on a tiny backbone: every endpoint, a mixed-language burst."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..serving.tiny_store import TEXT

pytestmark = pytest.mark.cluster


def test_every_endpoint(served):
    u, h = served["url"], served["headers"]
    r = httpx.post(f"{u}/v1/ner", json={"text": "Angela Merkel visited Nairobi.", "language": "en", "return_tokens": True},
                   headers=h)
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert res["stack"] == {"language": "en", "task": "ner"} and res["tokens"]
    r = httpx.post(f"{u}/v1/qa", json={"question": "Where?", "context": "It is in Nairobi.", "language": "xx"}, headers=h)
    assert r.status_code == 200 and r.json()["fallback"] == "task_only"
    info = httpx.get(f"{u}/v1/adapters", headers=h).json()
    assert info["languages"] == ["de", "en", "sw"]
    assert info["threads"] == 2  # the replica's 2 CPUs (Ray sets OMP_NUM_THREADS from num_cpus)
    assert httpx.get(f"{u}/healthz", headers=h).status_code == 200
    assert httpx.get(f"{u}/healthz").status_code == 401
    assert httpx.get(f"{u}/docs", headers=h).status_code == 200
    r = httpx.post(f"{u}/v1/ner", content=b"{not json", headers={**h, "content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    r = httpx.post(f"{u}/v1/ner", json={"text": "a", "language": "zz"}, headers=h)
    assert r.json()["results"][0]["fallback"] == "task_only"


def test_mixed_language_burst_equals_single_requests(served):
    u, h = served["url"], served["headers"]
    reqs = [{"text": TEXT[lang][i % 3], "language": lang} for i, lang in enumerate(["en", "sw", "de"] * 6)]
    reqs += [{"text": TEXT["sw"][1]}, {"text": TEXT["de"][2]}]  # detected

    async def go():
        async with httpx.AsyncClient(base_url=u, headers=h, timeout=60) as c:
            alone = [(await c.post("/v1/ner", json=r)).json() for r in reqs]
            burst = await asyncio.gather(*(c.post("/v1/ner", json=r) for r in reqs))
            return alone, [b.json() for b in burst]

    alone, burst = asyncio.run(go())
    for a, b in zip(alone, burst, strict=True):
        ea, eb = a["results"][0]["entities"], b["results"][0]["entities"]
        assert a["results"][0]["stack"] == b["results"][0]["stack"]
        assert [(e["start"], e["end"], e["label"]) for e in ea] == [(e["start"], e["end"], e["label"]) for e in eb]
        assert all(abs(x["score"] - y["score"]) < 1e-3 for x, y in zip(ea, eb, strict=True))
    # the burst shared forward passes across stacks (metrics come from the backbone replica via Control)
    time.sleep(2.5)
    fams = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{u}/metrics", headers=h).text)}
    hist = {s.name: s.value for s in fams["madx_batch_distinct_stacks"].samples if not s.labels.get("le")}
    assert hist["madx_batch_distinct_stacks_sum"] > hist["madx_batch_distinct_stacks_count"]
    assert any(s.labels.get("language") == "sw" for s in fams["madx_request_latency_seconds"].samples)


def test_admin_change_reaches_the_backbone(served):
    u, h = served["url"], served["headers"]
    r = httpx.delete(f"{u}/admin/adapters/de", headers=h, timeout=30)
    assert r.status_code == 200 and r.json()["version"] >= 1
    assert r.json()["replicas"] == {"live": 2, "applied": 2, "failed": {}}  # returned once every replica has it
    for _ in range(6):  # whichever replica answers
        assert "de" not in httpx.get(f"{u}/v1/adapters", headers=h).json()["languages"]
        r = httpx.post(f"{u}/v1/ner", json={"text": "Hallo Welt", "language": "de"}, headers=h)
        assert r.json()["results"][0]["fallback"] == "task_only"
    r = httpx.post(f"{u}/admin/adapters/de/load", headers=h, timeout=30)
    assert r.status_code == 200 and r.json()["replicas"] == {"live": 2, "applied": 2, "failed": {}}
    for _ in range(6):
        r = httpx.post(f"{u}/v1/ner", json={"text": "Hallo Welt", "language": "de"}, headers=h)
        assert r.json()["results"][0]["stack"]["language"] == "de"


def test_the_ray_control_plane_refuses_requests_without_the_token(served):
    """RAY_AUTH_MODE=disabled was forced and the dashboard/job API answered anyone."""
    import os
    from pathlib import Path

    token = os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").read_text().strip()
    for path in ("/api/jobs/", "/api/version", "/api/cluster_status"):
        assert httpx.get(served["dashboard"] + path, timeout=20).status_code == 401
        assert httpx.get(served["dashboard"] + path, headers={"Authorization": "Bearer wrong"},
                         timeout=20).status_code == 403
        assert httpx.get(served["dashboard"] + path, headers={"Authorization": f"Bearer {token}"},
                         timeout=20).status_code == 200


def test_a_trickled_body_gets_a_408_and_the_connection_is_closed(served):
    """Was: a body trickled one byte at a time held the connection (and a handler) for ever."""
    import socket
    import threading
    import time
    from urllib.parse import urlparse

    u = urlparse(served["url"])
    sock = socket.create_connection((u.hostname, u.port))
    sock.settimeout(30)
    sock.sendall(b"POST /v1/ner HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"X-API-Key: " + served["headers"]["X-API-Key"].encode() + b"\r\nContent-Length: 100000\r\n\r\n{")

    def trickle():
        try:
            for _ in range(60):  # one byte every 0.3 s: 18 s if nothing cut it
                time.sleep(0.3)
                sock.sendall(b" ")
        except OSError:
            pass
    threading.Thread(target=trickle, daemon=True).start()
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    finally:
        sock.close()
    assert got.startswith(b"HTTP/1.1 408") and b"limits.read_timeout_s" in got, got[:300]
