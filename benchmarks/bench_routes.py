"""What a route costs: the engine (no HTTP) serving the same mixed NER traffic with every request on
one route, forced by ``routing.overrides`` ('*:ner'). An ensemble runs each row once per listed
language adapter inside the same mixed batches (serving/engine.py ``_forward``), so its cost is
the extra rows, not extra passes or adapter switches.

    python benchmarks/bench_routes.py --json docs/bench_routes_cpu.json \
        --routes task_only english evidence ensemble:en+pcm ensemble:en+pcm+luo

``evidence`` is no override: each request on the route the store's evidence picks for its language
(the server's default).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import bench_engine, windows, workload  # noqa: E402

from serving import compute  # noqa: E402
from serving.engine import Engine  # noqa: E402
from serving.settings import load_settings  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--routes", nargs="+", default=["task_only", "english", "evidence", "ensemble:en+pcm",
                                                      "ensemble:en+pcm+luo"])
    ap.add_argument("--requests", type=int, default=192)
    ap.add_argument("--concurrency", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backbone-dtype", default="auto")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    reqs = workload(args.requests, 0, uniform=False)
    rows = {}
    for route in args.routes:
        overrides = {} if route == "evidence" else {"*:ner": route}
        engine = Engine(load_settings(env={}, backbone_dtype=args.backbone_dtype, routing={"overrides": overrides}))
        used = {}
        for t, lang in reqs:
            r = engine.route("ner", lang, t)
            used[r.name] = used.get(r.name, 0) + 1
        ntok = sum(map(len, windows(engine, reqs)))
        bench_engine(engine, reqs[:16], 8, 1, "mixed")  # warm-up
        res = bench_engine(engine, reqs, args.concurrency, args.repeats, "mixed")
        rows[route] = {"requests_per_s": round(res["requests_per_s"], 1), "p50_ms": round(res["p50_ms"], 1),
                       "p95_ms": round(res["p95_ms"], 1), "request_tokens": ntok, "routes_used": used}
        print(route, json.dumps(rows[route]), flush=True)
        compute.run_sync(lambda: None)
        del engine
    base = rows[args.routes[0]]["requests_per_s"]
    for r in rows.values():
        r["relative_throughput"] = round(r["requests_per_s"] / base, 3)
    out = {"command": "python benchmarks/bench_routes.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
           "requests": args.requests, "concurrency": args.concurrency, "repeats": args.repeats, "routes": rows}
    print("| route | req/s | × " + args.routes[0] + " | p50 ms | p95 ms |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| `{name}` | {r['requests_per_s']} | {r['relative_throughput']:.2f} | {r['p50_ms']} | {r['p95_ms']} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
