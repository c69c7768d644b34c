"""Where int8 time goes on this CPU: the engine's fp32 vs int8 speed, and torch's int8 matmul
(``torch._int_mm``, what torchao's int8 linear calls) through oneDNN against its fallback.

    python benchmarks/probe_int8.py [--json docs/probe_int8_cpu.json]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/probe_int8.py   # AVX2 kernels

ATen sends ``_int_mm`` to oneDNN only while mkldnn is enabled and, on x86, only where cpuinfo reports
AVX512-VNNI; everywhere else it runs a plain loop. The environment variables above cap the ISA that
oneDNN and ATen's own kernels use, but not cpuinfo's answer, so they cannot reproduce an AVX2-only
CPU; turning mkldnn off (``torch.backends.mkldnn.enabled = False``) takes the same fallback loop,
which is what this probe times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_http import ISA, sentences  # noqa: E402

from madx.precision import cpu_flags  # noqa: E402


def seconds(fn, n: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from serving.engine import Engine
    from serving.settings import load_settings

    res: dict = {"command": " ".join(["python", "benchmarks/probe_int8.py", *sys.argv[1:]]),
                 "isa": [f for f in ISA if f in cpu_flags()], "aten_capability": torch.backends.cpu.get_cpu_capability(),
                 "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}
    texts = sentences(64)
    engines = {d: Engine(load_settings(env={}, backbone_dtype=d, allow_slow_precision=True)) for d in ("fp32", "int8")}
    times: dict[str, list[float]] = {d: [] for d in engines}
    for e in engines.values():  # warm up
        asyncio.run(e.ner(texts, "en"))
    for _ in range(args.rounds):
        for d, e in engines.items():
            t = time.perf_counter()
            asyncio.run(e.ner(texts, "en"))
            times[d].append(time.perf_counter() - t)
    med = {d: statistics.median(v) for d, v in times.items()}
    res["engine_64_sentences_s"] = {d: round(v, 3) for d, v in med.items()}
    res["engine_int8_x_fp32"] = round(med["fp32"] / med["int8"], 2)
    a = torch.randint(-100, 100, (2048, 384), dtype=torch.int8)  # 8 windows of 256 tokens x a 384 -> 1536 layer
    b = torch.randint(-100, 100, (384, 1536), dtype=torch.int8)
    af, bf = a.float(), b.float()
    res["matmul_2048x384x1536_ms"] = {"fp32": round(1000 * seconds(lambda: af @ bf, 10), 2),
                                      "int8 _int_mm, oneDNN": round(1000 * seconds(lambda: torch._int_mm(a, b), 10), 2)}
    torch.backends.mkldnn.enabled = False
    res["matmul_2048x384x1536_ms"]["int8 _int_mm, fallback loop"] = round(1000 * seconds(lambda: torch._int_mm(a, b), 2), 2)
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
