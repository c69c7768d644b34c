"""Do the engine's precision speedups reach HTTP? The same requests to fp32, bf16 and int8 servers.

    python benchmarks/bench_http.py --rounds 5 --json docs/bench_http_cpu.json

One `madx-serve --no-ray` server per backbone precision (the shipped store), side by side. A precision
this CPU would run slower than fp32 is refused at start-up (serving/main.py `precision_problem`) and
reported as refused. Cases: NER requests of 1, 8 and 64 WikiANN en test sentences (`language: en`;
the sentences of loadtests/traffic.py without the data), and mixed traffic: 64 requests from
loadtests/traffic.py (19 languages, NER and QA, a fifth without `language`), 16 in flight at a time.
Every round sends each case to each server, the servers' order rotating from round to round; then the
same requests go, the same way interleaved, to an in-process Engine per precision, so the served
ratio stands next to the engine ratio. Medians over rounds. Nothing else may run on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "loadtests")]

from run_load import stop_server, wait_ready  # noqa: E402
from traffic import SENTENCES, pick  # noqa: E402

from madx.precision import cpu_flags  # noqa: E402

DATA = ROOT.parent / "shared/data/ner/wikiann_xtreme_panx/test-en.tsv"
DTYPES = ("fp32", "bf16", "int8")
ISA = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


def sentences(n: int) -> list[str]:
    if DATA.exists():
        from madx.train.data import read_conll

        return [" ".join(s.tokens) for s in read_conll(DATA).sentences[:n]]
    pool = [s for v in SENTENCES.values() for s in v]
    return [pool[i % len(pool)] for i in range(n)]


def cases(mixed_n: int) -> dict[str, list[dict]]:
    """case name -> requests ({'endpoint', 'json'}), all sent for one measurement."""
    import random

    sents = sentences(64)
    out = {f"ner_{n}": [{"endpoint": "/v1/ner", "json": {"texts": sents[:n], "language": "en"}}] for n in (1, 8, 64)}
    rng = random.Random(0)
    out["mixed"] = [pick(rng) for _ in range(mixed_n)]
    return out


async def send_http(client: httpx.AsyncClient, url: str, reqs: list[dict], concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one(r):
        async with sem:
            resp = await client.post(url + r["endpoint"], json=r["json"], timeout=300)
            if resp.status_code != 200:
                raise SystemExit(f"{url}{r['endpoint']}: {resp.status_code} {resp.text[:300]}")

    t = time.perf_counter()
    await asyncio.gather(*(one(r) for r in reqs))
    return time.perf_counter() - t


async def send_engine(engine, reqs: list[dict], concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one(r):
        body = r["json"]
        async with sem:
            if r["endpoint"] == "/v1/ner":
                await engine.ner(body.get("texts") or [body["text"]], body.get("language"))
            else:
                await engine.qa(body["question"], body["context"], body.get("language"))

    t = time.perf_counter()
    await asyncio.gather(*(one(r) for r in reqs))
    return time.perf_counter() - t


def start(dtype: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "MADX_BACKBONE_DTYPE": dtype, "MADX_HOST": "127.0.0.1"}
    env.pop("MADX_API_KEY", None)
    return subprocess.Popen([sys.executable, "-m", "serving.main", "--no-ray", "--port", str(port)], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def rounds_of(measure, names: list[str], work: dict[str, list[dict]], rounds: int, label: str) -> dict:
    """{case: {dtype: [seconds per round]}}, the dtypes' order rotating each round."""
    out = {c: {d: [] for d in names} for c in work}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for c, reqs in work.items():
            for d in order:
                out[c][d].append(measure(d, reqs, 16 if c == "mixed" else 1))
        print(f"{label} round {r + 1}/{rounds}:", {c: {d: round(v[-1], 3) for d, v in ds.items()} for c, ds in out.items()},
              flush=True)
    return out


def summary(times: dict) -> dict:
    res = {}
    for c, ds in times.items():
        med = {d: statistics.median(v) for d, v in ds.items()}
        res[c] = {d: {"median_s": round(m, 4), "x_fp32": round(med["fp32"] / m, 2) if "fp32" in med else None}
                  for d, m in med.items()}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mixed", type=int, default=64, help="requests in the mixed-traffic case")
    ap.add_argument("--port", type=int, default=8871)
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from serving.main import precision_problem
    from serving.settings import load_settings

    flags = cpu_flags()
    res: dict = {"command": " ".join(["python", "benchmarks/bench_http.py", *sys.argv[1:]]),
                 "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
                 "isa": [f for f in ISA if f in flags], "refused": {}}
    work = cases(args.mixed)
    res["requests"] = {c: len(r) for c, r in work.items()}
    names = []
    for d in args.dtypes:
        problem = precision_problem(load_settings(env={}, backbone_dtype=d))
        if problem:
            res["refused"][d] = problem
        else:
            names.append(d)
    print("precisions:", names, "refused:", res["refused"], flush=True)

    logs = ROOT / ".bench"
    logs.mkdir(exist_ok=True)
    procs = {d: start(d, args.port + i, logs / f"http_{d}.log") for i, d in enumerate(names)}
    urls = {d: f"http://127.0.0.1:{args.port + i}" for i, d in enumerate(names)}
    try:
        for d in names:
            wait_ready(urls[d], {}, 600, procs[d])
        loop = asyncio.new_event_loop()
        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=64))
        for d in names:  # warm up: the first passes of each shape allocate
            for reqs in work.values():
                loop.run_until_complete(send_http(client, urls[d], reqs, 16))
        http = rounds_of(lambda d, reqs, c: loop.run_until_complete(send_http(client, urls[d], reqs, c)),
                         names, work, args.rounds, "http")
        loop.run_until_complete(client.aclose())
    finally:
        for p in procs.values():
            stop_server(p)
    res["http"] = summary(http)

    from serving.engine import Engine

    engines = {d: Engine(load_settings(env={}, backbone_dtype=d)) for d in names}
    for d in names:
        for reqs in work.values():
            asyncio.run(send_engine(engines[d], reqs, 16))
    eng = rounds_of(lambda d, reqs, c: asyncio.run(send_engine(engines[d], reqs, c)), names, work, args.rounds, "engine")
    res["engine"] = summary(eng)
    res["served_over_engine_ratio"] = {
        c: {d: round(res["http"][c][d]["x_fp32"] / res["engine"][c][d]["x_fp32"], 2) for d in names}
        for c in work} if "fp32" in names else {}
    res["raw_seconds"] = {"http": http, "engine": eng}
    print(json.dumps({k: v for k, v in res.items() if k != "raw_seconds"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
