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
