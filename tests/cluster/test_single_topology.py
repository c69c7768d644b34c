"""topology: single — each replica is both the HTTP ingress and the backbone (one hop from Ray's
proxy). Deployed as a second application on the same cluster, under /single, with 2 replicas."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..serving.tiny_store import TEXT

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def single(served):
    from ray import serve

    from serving.deployments import build
    from serving.settings import load_settings

    key = served["headers"]["X-API-Key"]
    settings = load_settings(env={}, backbone=served["backbone"], adapter_store=str(served["store"]), api_key=key,
                             topology="single", backbone_replicas=2, backbone_num_cpus=0,  # the cluster's CPUs
                             batching={"max_wait_ms": 20})  # are held by the first app
    serve.run(build(settings), name="madx-single", route_prefix="/single")
    url = served["url"] + "/single"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", headers=served["headers"]).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    yield {"url": url, "headers": served["headers"]}
    serve.delete("madx-single")


def test_single_topology_serves_and_reports(single):
    u, h = single["url"], single["headers"]
    from ray import serve

    deployments = set(serve.status().applications["madx-single"].deployments)
    assert deployments == {"Server", "Control"}  # no separate Ingress: one hop
    r = httpx.post(f"{u}/v1/ner", json={"text": TEXT["sw"][0], "language": "sw", "return_tokens": True}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["stack"] == {"language": "sw", "task": "ner"}
    r = httpx.post(f"{u}/v1/qa", json={"question": "Where?", "context": "It is in Nairobi.", "language": "en"},
                   headers=h)
    assert r.status_code == 200 and r.json()["answers"]
    assert httpx.post(f"{u}/v1/ner", json={"text": "a" * 30_000}, headers=h).status_code == 413
    assert httpx.get(f"{u}/v1/adapters").status_code == 401
    for _ in range(8):  # both replicas answer
        httpx.post(f"{u}/v1/ner", json={"text": TEXT["en"][1], "language": "en"}, headers=h)
    time.sleep(2.5)  # replicas push their metrics to Control every second
    samples = [s for f in text_string_to_metric_families(httpx.get(f"{u}/metrics", headers=h).text) for s in f.samples]
    replicas = {s.labels["replica"] for s in samples if s.name == "madx_replica_info"}
    assert len(replicas) == 2  # this replica's own registry plus the other's, not twice the same
    stages = {s.labels["stage"] for s in samples if s.name == "madx_stage_seconds_total"}
    assert {"tokenise", "forward", "decode", "serialise"} <= stages


def test_single_topology_admin_reaches_every_replica(single):
    u, h = single["url"], single["headers"]
    r = httpx.delete(f"{u}/admin/adapters/de", headers=h, timeout=30)
    assert r.status_code == 200 and r.json()["replicas"] == {"live": 2, "applied": 2, "failed": {}}
    for _ in range(6):
        assert "de" not in httpx.get(f"{u}/v1/adapters", headers=h).json()["languages"]
    r = httpx.post(f"{u}/admin/adapters/de/load", headers=h, timeout=30)
    assert r.status_code == 200 and r.json()["replicas"] == {"live": 2, "applied": 2, "failed": {}}
    for _ in range(6):
        r = httpx.post(f"{u}/v1/ner", json={"text": "Hallo Welt", "language": "de"}, headers=h)
        assert r.json()["results"][0]["stack"]["language"] == "de"
