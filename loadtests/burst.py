"""Overload: a burst of N concurrent requests (10x what the queue holds), then recovery.

    python loadtests/burst.py --requests 2000 --out runs/burst       # starts the server itself
Reports status counts, whether every 503 carried Retry-After, the server's peak RSS during the
burst, and whether requests succeed afterwards without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_load import start_server, stop_server, tree_rss_mb, wait_ready  # noqa: E402
from traffic import SENTENCES  # noqa: E402


async def burst(url: str, n: int, headers: dict) -> tuple[Counter, int, float]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as c:
        langs = list(SENTENCES)

        async def one(i: int):
            lang = langs[i % len(langs)]
            text = " ".join(SENTENCES[lang] * 3)
            try:
                return await c.post("/v1/ner", json={"text": text, "language": lang})
            except httpx.HTTPError as e:
                return e
        t0 = time.monotonic()
        rs = await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.monotonic() - t0
    codes = Counter(r.status_code if isinstance(r, httpx.Response) else type(r).__name__ for r in rs)
    missing_retry_after = sum(1 for r in rs if isinstance(r, httpx.Response) and r.status_code == 503
                              and "Retry-After" not in r.headers)
    return codes, missing_retry_after, wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--queue-rows", type=int, default=200, help="batching.max_queue_rows of the started server")
    ap.add_argument("--out", type=Path, default=Path("runs/burst"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.port}"
    proc = start_server(args.port, args.out / "server.log", env={"MADX_BATCHING__MAX_QUEUE_ROWS": str(args.queue_rows)})
    try:
        wait_ready(url, {}, 300, proc)
        httpx.post(f"{url}/v1/ner", json={"text": "warm up", "language": "en"}, timeout=60)
        base = tree_rss_mb(proc.pid)
        peak = [base]
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                peak.append(tree_rss_mb(proc.pid) or 0)
                stop.wait(0.5)

        th = threading.Thread(target=watch, daemon=True)
        th.start()
        codes, missing, wall = asyncio.run(burst(url, args.requests, {}))
        stop.set()
        th.join()
        time.sleep(2)
        after = [httpx.post(f"{url}/v1/ner", json={"text": "Rais wa Kenya alizuru Mombasa.", "language": "sw"},
                            timeout=60).status_code for _ in range(5)]
        res = {"requests": args.requests, "queue_rows": args.queue_rows, "status_counts": dict(codes),
               "503_without_retry_after": missing, "burst_seconds": round(wall, 1), "rss_mb_before": base,
               "rss_mb_peak": max(peak), "rss_mb_after": tree_rss_mb(proc.pid), "after_burst_statuses": after,
               "command": " ".join(sys.argv)}
    finally:
        stop_server(proc)
    (args.out / "burst.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    ok = missing == 0 and all(c == 200 for c in after) and set(codes) <= {200, 503}
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
