"""deploy/grafana/madx-serve.json: every query names only metrics the server exports."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "madx-serve.json"
METRIC = re.compile(r"\b(madx_[a-z_]+)\b")


def exported_samples(engine) -> set[str]:
    """Sample names (with _total/_bucket/_sum/_count) from a live exposition after real traffic."""
    import httpx

    from serving.app import LocalBackend, build_app

    async def go():
        app = build_app(LocalBackend(engine), engine.s, engine.m)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            await c.post("/v1/ner", json={"text": "Angela Merkel visited Nairobi.", "language": "sw"})
            await c.post("/v1/qa", json={"question": "Where?", "context": "In Nairobi."})
            engine.m.rejected.labels(engine.m.replica)  # a labelled child exists once a replica has one
            engine.m.info.labels(engine.m.replica, "node", "1").set(1)
            return (await c.get("/metrics")).text
    return {s.name for f in text_string_to_metric_families(asyncio.run(go())) for s in f.samples}


def test_dashboard_is_valid_and_every_query_names_an_exported_metric(engine):
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 15 and all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])
    names = exported_samples(engine)
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used, exprs
    missing = sorted(used - names)
    assert not missing, f"dashboard queries name metrics the server does not export: {missing}"


def test_the_check_catches_a_wrong_name(engine):
    assert "madx_requests" not in exported_samples(engine)  # counters are exported as *_total
