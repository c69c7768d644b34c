"""Small requests while a big one runs, over HTTP; and how fast a request too big for its timeout is refused.

    python benchmarks/bench_fairness.py --json docs/bench_fairness_cpu.json

Each variant is one `madx-serve --no-ray` server (shipped store, default precision) with the settings
of the variant. Scenarios, in order, on each:
- idle: 20 small requests one after another (one English sentence, NER, `language: en`);
- big alone: one QA request of >= 1 000 windows (a long question over a Japanese context: the question
  leaves each window 32 context tokens, so the windows move 16 tokens at a time);
- big + small: the same big request, and a small request every 100 ms until it is answered.
  Reported: the small requests' p50 / p99 / max, and the big request's time against its time alone.
A context that long is over the default `limits.max_chars` (20 000; a 20 000-character context makes at
most ~880 windows), and 1 000 windows take longer than the default 60 s `request_timeout_s` here, so
these variants raise both; the 413 scenario runs on a server with the defaults:
- too big: one NER request of 64 texts x 20 000 Japanese characters (~900 000 tokens, minutes of work),
  with small requests every 100 ms from 1 s before it until 2 s after its answer. Reported: the time to
  its 413, and the small requests' latency meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "loadtests")]

from run_load import stop_server, wait_ready  # noqa: E402

from madx.precision import cpu_flags  # noqa: E402

JA = "岸田文雄首相は火曜日に東京で国連事務総長と会談した。トヨタは名古屋に新しい工場を開設した。"
QUESTION_WORDS = "Where did the delegation of the United Nations meet the president"
SMALL = {"text": "Angela Merkel visited Nairobi.", "language": "en"}
ISA = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")
BIG_SETTINGS = {"MADX_REQUEST_TIMEOUT_S": "300", "MADX_LIMITS__MAX_CHARS": "30000"}


def big_request(target_windows: int) -> tuple[dict, int]:
    """A QA body needing just over ``target_windows`` windows (and at most 1 024), counted as the server does."""
    from madx.backbone import xlmr_tokenizer
    from madx.features import qa_windows

    tok = xlmr_tokenizer()
    words = QUESTION_WORDS.split()
    def grown(q: str) -> str:
        return f"{q[:-1]} {words[len(q.split()) % len(words)]}?".strip()

    q = "?"
    while len(tok(grown(q), add_special_tokens=False)["input_ids"]) <= 384 - 4 - 32:  # 32 context tokens a window
        q = grown(q)
    room = 384 - len(tok(q, add_special_tokens=False)["input_ids"]) - 4
    chars = 20_000
    while True:
        ctx = (JA * (chars // len(JA) + 1))[:chars]
        n = len(qa_windows(tok, q, ctx, 384, min(128, room // 2)))
        if n >= target_windows:
            return {"question": q, "context": ctx, "language": "ja"}, n
        chars += 500


async def small_stream(client, url: str, stop: asyncio.Event, lat: list[float], codes: list[int]) -> None:
    async def one():
        t = time.perf_counter()
        r = await client.post(url + "/v1/ner", json=SMALL, timeout=300)
        lat.append(time.perf_counter() - t)
        codes.append(r.status_code)
    tasks = []
    while not stop.is_set():
        tasks.append(asyncio.ensure_future(one()))
        await asyncio.sleep(0.1)
    await asyncio.gather(*tasks)


def stats(lat: list[float]) -> dict:
    a = np.array(lat) * 1000
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 1), "p99_ms": round(float(np.percentile(a, 99)), 1),
            "max_ms": round(float(a.max()), 1)}


async def timed_post(client, url: str, path: str, body: dict | bytes) -> tuple[float, int, dict]:
    """``body`` as a dict, or as JSON bytes encoded beforehand (a big body encoded on this event loop
    would delay the small requests' own clock, not the server's answers)."""
    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    t = time.perf_counter()
    r = await client.post(url + path, timeout=600, **kw)
    return time.perf_counter() - t, r.status_code, r.json()


async def fairness(url: str, big: dict) -> dict:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1000)) as client:
        for _ in range(3):
            await client.post(url + "/v1/ner", json=SMALL)
        idle = []
        for _ in range(20):
            t = time.perf_counter()
            await client.post(url + "/v1/ner", json=SMALL)
            idle.append(time.perf_counter() - t)
        alone_s, code, body = await timed_post(client, url, "/v1/qa", big)
        if code != 200:
            raise SystemExit(f"big request: {code} {body}")
        stop, lat, codes = asyncio.Event(), [], []
        smalls = asyncio.ensure_future(small_stream(client, url, stop, lat, codes))
        with_s, code, _ = await timed_post(client, url, "/v1/qa", big)
        stop.set()
        await smalls
        return {"idle_small": stats(idle), "big_windows": body["windows"], "big_alone_s": round(alone_s, 2),
                "big_with_smalls_s": round(with_s, 2), "big_slowdown": round(with_s / alone_s - 1, 3),
                "small_during_big": stats(lat), "small_status": sorted(set(codes))}


async def too_big(url: str) -> dict:
    body = json.dumps({"texts": [(JA * 700)[:20_000]] * 64, "language": "ja"}, ensure_ascii=False).encode()
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1000)) as client:
        for _ in range(3):
            await client.post(url + "/v1/ner", json=SMALL)
        stop, lat, codes = asyncio.Event(), [], []
        smalls = asyncio.ensure_future(small_stream(client, url, stop, lat, codes))
        await asyncio.sleep(1.0)
        secs, code, answer = await timed_post(client, url, "/v1/ner", body)
        await asyncio.sleep(2.0)
        stop.set()
        await smalls
        return {"status": code, "seconds_to_answer": round(secs, 3), "detail": str(answer)[:400],
                "small_meanwhile": stats(lat), "small_status": sorted(set(codes))}


def serve(port: int, env: dict, log: Path) -> subprocess.Popen:
    full = {**os.environ, **env, "MADX_HOST": "127.0.0.1"}
    full.pop("MADX_API_KEY", None)
    return subprocess.Popen([sys.executable, "-m", "serving.main", "--no-ray", "--port", str(port)], env=full,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=1000, help="windows of the big QA request (at least)")
    ap.add_argument("--pass-ms", nargs="*", default=["500", "250", "100", "null"],
                    help="batching.max_pass_ms of each variant (null: passes bounded by max_batch_tokens only); "
                         "none given: the 413 scenario only")
    ap.add_argument("--port", type=int, default=8881)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    flags = cpu_flags()
    big, n = big_request(args.windows)
    res: dict = {"command": " ".join(["python", "benchmarks/bench_fairness.py", *sys.argv[1:]]),
                 "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
                 "isa": [f for f in ISA if f in flags], "big_request": {"question_chars": len(big["question"]),
                                                                      "context_chars": len(big["context"]), "windows": n},
                 "variants": {}}
    print(res, flush=True)
    logs = ROOT / ".bench"
    logs.mkdir(exist_ok=True)
    plans = [(f"max_pass_ms {p}", {**BIG_SETTINGS, "MADX_BATCHING__MAX_PASS_MS": p}, "fairness") for p in args.pass_ms]
    plans.append(("defaults", {}, "too_big"))
    for i, (name, env, scenario) in enumerate(plans):
        url = f"http://127.0.0.1:{args.port + i}"
        proc = serve(args.port + i, env, logs / f"fairness_{i}.log")
        try:
            wait_ready(url, {}, 600, proc)
            out = asyncio.run(fairness(url, big) if scenario == "fairness" else too_big(url))
        finally:
            stop_server(proc)
        res["variants"][name] = {"env": env, **out}
        print(name, out, flush=True)
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
