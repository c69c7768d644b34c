"""Serving benchmark: the ratios our users care about, in ONE run on one machine.

    python benchmarks/bench_serving.py --requests 192 --concurrency 48 --http-seconds 40 --json docs/bench_serving_cpu.json

1. backbone-only forward over the same windows, same token budget (the limit), and with every window
   alone (what batching can gain at most over per-request passes on this machine);
2. the engine (routing, tokenisation, windows, batching, decoding; no HTTP) on mixed-language
   traffic and on uniform traffic (one stack), and with two other batching policies on the mixed
   traffic: group-by-stack batches and per-request adapter switching (each request alone);
3. cold adapter load time (disk -> device, CPU cache -> device);
4. served over HTTP (Ray Serve on this machine, locust as a subprocess): throughput and latency.

Token throughput counts real (unpadded) tokens of the model windows each request needs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "loadtests"))
sys.path.insert(0, str(ROOT))

from traffic import SENTENCES, WEIGHTS  # noqa: E402

from madx.features import ner_features, pad  # noqa: E402
from serving import compute  # noqa: E402
from serving.engine import Engine  # noqa: E402
from serving.settings import load_settings  # noqa: E402
from serving.text import split_words  # noqa: E402


def workload(n: int, seed: int, uniform: bool) -> list[tuple[str, str]]:
    """(text, language) NER requests of 1-3 sentences; uniform: the same texts, all routed as 'en'."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        lang = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
        k = rng.choice([1, 1, 2, 3])
        text = " ".join(SENTENCES[lang][(i + rng.randrange(2)) % 2] for i in range(k))
        out.append((text, "en" if uniform else lang))
    return out


def windows(engine: Engine, reqs) -> list[list[int]]:
    return [f.input_ids for t, _ in reqs
            for f in ner_features(engine.tok, [t], [[(w.start, w.end) for w in split_words(t)]], None, engine.ner_window)]


def timed_passes(forward, seqs: list[list[int]], batches: list[list[int]], pad_id: int, repeats: int) -> float:
    """Best-of-``repeats`` real tokens/s of ``forward(ids, mask, rows)`` over ``batches`` of ``seqs``."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.inference_mode():
            for idx in batches:
                ids = pad([seqs[i] for i in idx], pad_id)
                lens = torch.tensor([len(seqs[i]) for i in idx])
                forward(ids, (torch.arange(ids.shape[1])[None, :] < lens[:, None]).long(), idx)
        best = min(best, time.perf_counter() - t0)
    return sum(map(len, seqs)) / best


def bench_backbone(engine: Engine, seqs: list[list[int]], repeats: int, per_row: bool = False) -> float:
    """HF encoder forward (no adapters), length-sorted batches under the same token budget; or, with
    ``per_row``, every window alone (the ceiling of batching's gain over per-request passes)."""
    from serving.batcher import plan_batches

    b = engine.s.batching
    batches = ([[i] for i in range(len(seqs))] if per_row else
               plan_batches([len(s) for s in seqs], b.max_batch_tokens, b.max_batch_rows))
    enc = engine.model.backbone
    return timed_passes(lambda ids, mask, _: enc(input_ids=ids, attention_mask=mask), seqs, batches,
                        engine.tok.pad_token_id, repeats)


def bench_model(engine: Engine, reqs, repeats: int) -> float:
    """The model alone with the adapters: MadxModel over the engine's windows, each with the stack the
    engine routes it to, under the same batch plan (no routing, tokenising, queueing or decoding in
    the timed part). engine / this = the serving overhead itself."""
    from serving.batcher import plan_batches

    seqs, stacks = [], []
    for t, lang in reqs:
        st = engine.route("ner", lang, t).stack
        for f in ner_features(engine.tok, [t], [[(w.start, w.end) for w in split_words(t)]], None, engine.ner_window):
            seqs.append(f.input_ids)
            stacks.append(st)
    b = engine.s.batching
    batches = plan_batches([len(s) for s in seqs], b.max_batch_tokens, b.max_batch_rows)
    return timed_passes(lambda ids, mask, idx: engine.model(ids, mask, [stacks[i] for i in idx]), seqs, batches,
                        engine.tok.pad_token_id, repeats)


def bench_engine(engine: Engine, reqs, concurrency: int, repeats: int, policy: str) -> dict:
    engine.batcher.policy = policy
    ntok = sum(map(len, windows(engine, reqs)))

    async def once() -> tuple[float, list[float]]:
        sem = asyncio.Semaphore(concurrency)
        lat: list[float] = []

        async def one(text, lang):
            async with sem:
                t = time.perf_counter()
                await engine.ner([text], lang)
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(t, lang) for t, lang in reqs))
        return time.perf_counter() - t0, lat

    before = stage_seconds(engine)
    runs = [asyncio.run(once()) for _ in range(repeats)]
    after = stage_seconds(engine)
    wall, lat = min(runs, key=lambda r: r[0])
    lat.sort()
    engine.batcher.policy = "mixed"
    n = repeats * len(reqs)
    stages = {k: 1000 * (after.get(k, 0) - before.get(k, 0)) / n for k in after}
    total = sum(r[0] for r in runs) * 1000 / n
    return {"tokens_per_s": ntok / wall, "requests_per_s": len(reqs) / wall, "seconds": wall,
            "p50_ms": 1000 * lat[len(lat) // 2], "p95_ms": 1000 * lat[int(len(lat) * 0.95)],
            # where a request's time goes (ms per request, summed over threads; wall = elapsed / requests)
            "stages_ms_per_request": {**{k: round(v, 3) for k, v in sorted(stages.items())},
                                      "wall": round(total, 3)}}


def stage_seconds(engine: Engine) -> dict[str, float]:
    out = {}
    for fam in engine.m.registry.collect():
        if fam.name == "madx_stage_seconds":
            for smp in fam.samples:
                if smp.name.endswith("_total"):
                    out[smp.labels["stage"]] = out.get(smp.labels["stage"], 0.0) + smp.value
    return out


def bench_cold_load(engine: Engine) -> dict:
    c = engine.cache
    out = {}
    for tier in ("disk", "cpu"):
        times = []
        for name in sorted(c.served("language")):
            c._unload(name)
            if tier == "disk":
                c.cpu.pop(name, None)
            t0 = time.perf_counter()
            c.ensure({name})
            times.append(time.perf_counter() - t0)
        out[f"{tier}_ms_mean"] = 1000 * sum(times) / len(times)
        out[f"{tier}_ms_max"] = 1000 * max(times)
    return out


def process_group(name: str) -> str:
    """Which part of the served path a process of the server is (by Ray's process titles)."""
    for key, group in ((":Server", "replica (ingress + backbone)"), (":Backbone", "backbone replica"),
                       (":Ingress", "ingress replica"), ("ProxyActor", "Ray HTTP proxy"), (":Control", "control"),
                       ("--no-ray", "madx-serve --no-ray (HTTP + engine, one process)")):
        if key in name:
            return group
    return "Ray system (raylet, GCS, controller, ...)"


def cpu_by_group(root_pid: int) -> dict[str, float]:
    import psutil

    out: dict[str, float] = {}
    try:
        procs = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            t = p.cpu_times()
            g = process_group(" ".join(p.cmdline()) or p.name())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        out[g] = out.get(g, 0.0) + t.user + t.system
    return out


def bench_http(seconds: int, users: int, port: int, env: dict | None = None, no_ray: bool = False) -> dict:
    """Start madx-serve (Ray, local; or one process with ``no_ray``), run locust closed-loop, read tokens
    served from /metrics; CPU seconds of every server process (by role) and of locust over the measured window."""
    import resource

    import httpx
    from run_load import start_server, stop_server, wait_ready

    out = ROOT / ".bench"  # git-ignored
    out.mkdir(exist_ok=True)
    proc = start_server(port, out / "server.log", env=env, no_ray=no_ray)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, {}, 300, proc)

        def counter(prefix: str, label: str = "") -> float:
            text = httpx.get(f"{url}/metrics").text
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith(prefix + "{") and label in line)

        def tokens() -> float:
            return counter("madx_tokens_total")

        def locust(duration_s: int, *extra: str) -> None:
            # closed loop: each user sends as fast as it is answered
            env = {**os.environ, "RAY_AUTH_MODE": "token", "MADX_USER_RPS": "1000"}
            subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests/locustfile.py"), "--headless",
                            "-u", str(users), "-r", str(users), "-t", f"{duration_s}s", "--host", url, *extra,
                            "--only-summary", "--loglevel", "ERROR"], env=env, stdout=subprocess.DEVNULL, check=False)

        prefix = out / "locust"
        locust(8)  # warm up, then measure
        time.sleep(2.5)
        k0, f0 = tokens(), counter("madx_stage_seconds_total", 'stage="forward"')
        c0, l0 = cpu_by_group(proc.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
        locust(seconds, "--csv", str(prefix))
        c1, l1 = cpu_by_group(proc.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
        time.sleep(2.5)  # replicas push their metrics every second
        k1 = tokens()  # the tokens of this run only: the server was idle before and after it
        f1 = counter("madx_stage_seconds_total", 'stage="forward"')
        import csv

        agg = [r for r in csv.DictReader(open(f"{prefix}_stats.csv")) if r["Name"] == "Aggregated"][0]
        n = max(int(agg["Request Count"]), 1)
        cpu = {g: round(1000 * (c1.get(g, 0.0) - c0.get(g, 0.0)) / n, 2) for g in c1}
        cpu["locust (load generator)"] = round(1000 * ((l1.ru_utime + l1.ru_stime) - (l0.ru_utime + l0.ru_stime)) / n, 2)
        return {"users": users, "seconds": seconds, "requests": int(agg["Request Count"]),
                "failures": int(agg["Failure Count"]), "requests_per_s": float(agg["Requests/s"]),
                "tokens_per_s": (k1 - k0) / seconds, "p50_ms": float(agg["50%"]), "p95_ms": float(agg["95%"]),
                "p99_ms": float(agg["99%"]), "env": env or {},
                # CPU milliseconds per request by process role; forward = wall ms of model passes per request
                # (on 2 torch threads it uses up to twice that in CPU time)
                "cpu_ms_per_request": cpu, "forward_wall_ms_per_request": round(1000 * (f1 - f0) / n, 2)}
    finally:
        stop_server(proc)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=192)
    ap.add_argument("--concurrency", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--http-seconds", type=int, default=40, help="0 skips the HTTP part")
    ap.add_argument("--http-users", type=int, default=48)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--backbone-dtype", default="auto", choices=("auto", "fp32", "bf16", "int8"))
    ap.add_argument("--adapter-dtype", default="fp32", choices=("fp32", "backbone"))
    ap.add_argument("--adapter-kernel", default="auto", choices=("auto", "runs", "gathered"))
    ap.add_argument("--topologies", nargs="+", default=["single", "two_hop"], choices=("single", "two_hop", "no_ray"),
                    help="HTTP servers to measure: Ray with one hop or two, or madx-serve --no-ray (one process)")
    ap.add_argument("--server-env", nargs="*", default=[], help="extra KEY=VALUE for the served runs (e.g. MADX_THREADS=1)")
    ap.add_argument("--only", nargs="*", default=None, help="engine rows to run (default all), e.g. engine_mixed")
    ap.add_argument("--batching", nargs="*", default=[], metavar="KEY=VALUE",
                    help="engine batching settings to try (e.g. max_batch_rows=128 max_pass_ms=1000)")
    args = ap.parse_args(argv)

    engine = Engine(load_settings(env={}, backbone_dtype=args.backbone_dtype, adapter_dtype=args.adapter_dtype,
                                  batching={"adapter_kernel": args.adapter_kernel,
                                            **dict(kv.split("=", 1) for kv in args.batching)}))
    mixed, uniform = workload(args.requests, 0, False), workload(args.requests, 0, True)
    seqs = windows(engine, mixed)
    res: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                            f"{torch.get_num_threads()} threads",
                 "backbone": engine.model.backbone_name, "requests": args.requests, "windows": len(seqs),
                 "tokens": sum(map(len, seqs)), "stacks_in_mixed": len({lang for _, lang in mixed}),
                 "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                 "backbone_dtype": engine.model.backbone_dtype, "adapter_kernel": engine.model.adapter_kernel,
                 "adapter_dtype": args.adapter_dtype, "batching": engine.s.batching.model_dump()}
    asyncio.run(engine.ner(["warm up"], "en"))
    # torch work on the engine's compute thread, as the server does it (serving/compute.py)
    compute.run_sync(bench_backbone, engine, seqs[:64], 1)
    res["backbone_only"] = {"tokens_per_s": compute.run_sync(bench_backbone, engine, seqs, args.repeats)}
    res["backbone_only_per_row"] = {"tokens_per_s": compute.run_sync(bench_backbone, engine, seqs, args.repeats, True)}
    res["model_mixed"] = {"tokens_per_s": compute.run_sync(bench_model, engine, mixed, args.repeats)}
    for name, reqs, policy in (("engine_uniform", uniform, "mixed"), ("engine_mixed", mixed, "mixed"),
                               ("engine_group_by_stack", mixed, "group_by_stack"),
                               ("engine_per_request", mixed, "per_request")):
        if args.only is not None and name not in args.only:
            continue
        res[name] = bench_engine(engine, reqs, args.concurrency, args.repeats, policy)
        print(name, {k: round(v, 1) if isinstance(v, float) else v for k, v in res[name].items()}, flush=True)
    res["cold_load"] = compute.run_sync(bench_cold_load, engine)
    del engine
    if args.http_seconds:
        env = {"MADX_BACKBONE_DTYPE": args.backbone_dtype, "MADX_ADAPTER_DTYPE": args.adapter_dtype,
               **dict(kv.split("=", 1) for kv in args.server_env)}
        for i, topo in enumerate(args.topologies):  # a port each: the previous server's proxy may linger a moment
            res[f"http_{topo}"] = bench_http(args.http_seconds, args.http_users, args.port + i,
                                             {**env, **({} if topo == "no_ray" else {"MADX_TOPOLOGY": topo})},
                                             no_ray=topo == "no_ray")
            print(f"http_{topo}", res[f"http_{topo}"], flush=True)
    b = res["backbone_only"]["tokens_per_s"]
    tps = {k: v["tokens_per_s"] for k, v in res.items() if isinstance(v, dict) and "tokens_per_s" in v}
    pairs = [("engine_mixed", "engine_uniform"), ("engine_mixed", "backbone_only"), ("engine_mixed", "model_mixed"),
             ("model_mixed", "backbone_only"), ("engine_mixed", "engine_per_request"),
             ("engine_mixed", "engine_group_by_stack"), ("backbone_only", "backbone_only_per_row")]
    res["ratios"] = {f"{a} / {c}": tps[a] / tps[c] for a, c in pairs if a in tps and c in tps}
    for topo in args.topologies if args.http_seconds else ():
        res["ratios"][f"http_{topo} / backbone_only"] = res[f"http_{topo}"]["tokens_per_s"] / b
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
