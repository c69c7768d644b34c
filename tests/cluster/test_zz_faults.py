"""Faults on the shared 2-node cluster (runs last: it kills a replica). A backbone replica process is
killed during a locust run: Serve replaces it and the ingress retries the requests that died with
it, so the run has no failed requests (policy: replica_failure_retries=2)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import replica_series

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]


def replicas(served) -> dict[str, int]:
    return {s["replica"]: int(s["pid"]) for s in replica_series(served)}


def _locust(served, tmp_path, seconds: int):
    env = {**os.environ, "MADX_API_KEY": served["headers"]["X-API-Key"], "MADX_USER_RPS": "3"}
    prefix = tmp_path / "locust"
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless", "-u", "6",
           "-r", "6", "-t", f"{seconds}s", "--host", served["url"], "--csv", str(prefix), "--only-summary",
           "--loglevel", "ERROR"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL), prefix


def _summary(prefix):
    agg = [r for r in csv.DictReader(open(f"{prefix}_stats.csv")) if r["Name"] == "Aggregated"][0]
    return int(agg["Request Count"]), int(agg["Failure Count"]), open(f"{prefix}_failures.csv").read()


def test_unload_reload_and_a_corrupt_adapter_during_load_fail_no_request(served, tmp_path):
    """Unload and reload under locust load, then a reload over a corrupted file: 0 failed
    user requests; the corrupt reload is refused (422) and the verified copy keeps serving."""
    import httpx

    loc, prefix = _locust(served, tmp_path, 25)
    h, url = served["headers"], served["url"]
    time.sleep(5)
    assert httpx.delete(f"{url}/admin/adapters/sw", headers=h, timeout=60).status_code == 200
    time.sleep(3)
    assert httpx.post(f"{url}/admin/adapters/sw/load", headers=h, timeout=60).status_code == 200
    time.sleep(3)
    w = served["store"] / "sw" / "adapter.safetensors"
    good = w.read_bytes()
    try:
        w.write_bytes(good[:-64] + b"\0" * 64)
        r = httpx.post(f"{url}/admin/adapters/sw/load", headers=h, timeout=60)
        assert r.status_code == 422 and "sha256" in r.json()["error"], r.text
    finally:
        w.write_bytes(good)
    loc.wait(timeout=120)
    count, failures, detail = _summary(prefix)
    assert count >= 50 and failures == 0, detail
    r = httpx.post(f"{url}/v1/ner", json={"text": "Rais wa Kenya.", "language": "sw"}, headers=h, timeout=60)
    assert r.json()["results"][0]["stack"]["language"] == "sw"


def test_killed_replica_is_replaced_and_no_request_fails(served, tmp_path):
    before = replicas(served)
    assert len(before) == 2
    env = {**os.environ, "MADX_API_KEY": served["headers"]["X-API-Key"], "MADX_USER_RPS": "3"}
    prefix = tmp_path / "locust"
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless", "-u", "6",
           "-r", "6", "-t", "25s", "--host", served["url"], "--csv", str(prefix), "--only-summary", "--loglevel", "ERROR"]
    loc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    time.sleep(6)
    victim, pid = sorted(before.items())[0]
    os.kill(pid, signal.SIGKILL)
    loc.wait(timeout=120)
    agg = [r for r in csv.DictReader(open(f"{prefix}_stats.csv")) if r["Name"] == "Aggregated"][0]
    assert int(agg["Request Count"]) >= 50
    assert int(agg["Failure Count"]) == 0, open(f"{prefix}_failures.csv").read()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = replicas(served)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(1)
    assert len(now) == 2 and victim not in now, now  # Serve started a replacement
