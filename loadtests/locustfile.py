"""Locust scenario: mixed-language NER + QA traffic (see traffic.py). Run headless, never next to ray:
    locust -f loadtests/locustfile.py --headless -u 32 -r 8 -t 60s --host http://127.0.0.1:8000
Set MADX_API_KEY when the server has one."""

from __future__ import annotations

import os
import random
import sys

from locust import FastHttpUser, constant_throughput, task

sys.path.insert(0, os.path.dirname(__file__))
from traffic import pick  # noqa: E402


class MadxUser(FastHttpUser):
    wait_time = constant_throughput(float(os.environ.get("MADX_USER_RPS", "2")))

    def on_start(self) -> None:
        self.rng = random.Random(int(os.environ.get("MADX_SEED", "0")) + id(self))
        key = os.environ.get("MADX_API_KEY")
        self.headers = {"X-API-Key": key} if key else {}

    @task
    def request(self) -> None:
        r = pick(self.rng)
        name = f"{r['endpoint']} [{r['language']}]" if os.environ.get("MADX_PER_LANGUAGE") else r["endpoint"]
        with self.client.post(r["endpoint"], json=r["json"], headers=self.headers, name=name, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
