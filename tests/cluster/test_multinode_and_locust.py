"""The 2-node cluster serves from both nodes; a short bounded locust run has 0 failed requests."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import replica_series

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]


def replica_nodes(served) -> dict[str, str]:
    return {s["replica"]: s["node"] for s in replica_series(served)}


def test_backbone_replicas_spread_across_both_nodes(served):
    assert len(served["nodes"]) == 2
    deadline = time.monotonic() + 30
    nodes = {}
    while time.monotonic() < deadline:
        nodes = replica_nodes(served)
        if len(set(nodes.values())) == 2:
            break
        time.sleep(1)
    assert len(nodes) == 2 and len(set(nodes.values())) == 2, nodes
    assert set(nodes.values()) == {n[:12] for n in served["nodes"]}
    # and both replicas answer: requests spread over them
    for _ in range(20):
        r = httpx.post(f"{served['url']}/v1/ner", json={"text": "Nairobi ni mji mkuu.", "language": "sw"},
                       headers=served["headers"])
        assert r.status_code == 200
    time.sleep(2.5)
    text = httpx.get(f"{served['url']}/metrics", headers=served["headers"]).text
    served_by = {line.split('replica="')[1].split('"')[0] for line in text.splitlines()
                 if line.startswith("madx_batch_rows_count{") and float(line.rsplit(" ", 1)[1]) > 0}
    assert len(served_by) == 2, served_by


def test_bounded_locust_run_has_no_failures(served, tmp_path):
    env = {**os.environ, "MADX_API_KEY": served["headers"]["X-API-Key"], "MADX_USER_RPS": "2"}
    prefix = tmp_path / "locust"
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless", "-u", "6",
           "-r", "6", "-t", "10s", "--host", served["url"], "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING"]
    subprocess.run(cmd, env=env, check=False, timeout=120, stdout=subprocess.DEVNULL)
    agg = [r for r in csv.DictReader(open(f"{prefix}_stats.csv")) if r["Name"] == "Aggregated"][0]
    assert int(agg["Request Count"]) >= 20
    assert int(agg["Failure Count"]) == 0, open(f"{prefix}_failures.csv").read()
