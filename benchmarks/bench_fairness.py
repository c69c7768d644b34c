"""Latency of small requests while one big request runs.

    python benchmarks/bench_fairness.py [--big-texts 48] [--json docs/bench_fairness_cpu.json]

One engine (embedded backbone, shipped store). A big NER request (``--big-texts`` texts of ~1 500
characters each, hundreds of windows) is submitted, then one small NER request (one sentence) every
100 ms until the big one is done. Reported: the small requests' p50/p99/max latency and the big
request's latency, with today's rounds (round-robin over requests, at most 2 x max_batch_rows rows and
2 x max_batch_tokens tokens) and with the
old behaviour (every round takes the whole queue), in one run, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import numpy as np

SENT = ("Rais William Ruto alikutana na viongozi wa Umoja wa Mataifa mjini Nairobi kujadili bajeti ya serikali "
        "na mipango ya maendeleo ya kanda ya Afrika Mashariki. ")


async def scenario(engine, big_texts: int) -> dict:
    big = [SENT * 30] * big_texts  # ~5 windows each
    small_lat: list[float] = []
    t0 = time.perf_counter()
    big_task = asyncio.ensure_future(engine.ner(big, "sw"))

    async def small():
        t = time.perf_counter()
        await engine.ner(["Angela Merkel visited Nairobi."], "en")
        small_lat.append(time.perf_counter() - t)
    smalls = []
    while not big_task.done():
        smalls.append(asyncio.ensure_future(small()))
        await asyncio.sleep(0.1)
    res = await big_task
    big_s = time.perf_counter() - t0
    await asyncio.gather(*smalls)
    windows = sum(r["windows"] for r in res["results"])
    lat = np.array(small_lat) * 1000
    return {"big_windows": windows, "big_s": round(big_s, 2), "small_n": len(lat),
            "small_p50_ms": round(float(np.percentile(lat, 50)), 1), "small_p99_ms": round(float(np.percentile(lat, 99)), 1),
            "small_max_ms": round(float(lat.max()), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big-texts", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from serving.engine import Engine
    from serving.settings import load_settings

    engine = Engine(load_settings(env={}))
    fair = (engine.batcher.round_rows, engine.batcher.round_tokens)
    asyncio.run(engine.ner(["warm up"], "en"))
    runs: dict[str, list[dict]] = {"round-robin rounds (now)": [], "whole queue per round (before)": []}
    for _ in range(args.repeats):
        for name, (rows, toks) in (("round-robin rounds (now)", fair), ("whole queue per round (before)", (10**9, 10**12))):
            engine.batcher.round_rows, engine.batcher.round_tokens = rows, toks
            runs[name].append(asyncio.run(scenario(engine, args.big_texts)))
            print(name, runs[name][-1], flush=True)
    out = {name: {k: round(statistics.median(r[k] for r in rs), 2) for k in rs[0]} for name, rs in runs.items()}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"median_of_repeats": out, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
