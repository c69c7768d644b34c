"""One-command load test: start the server, run a bounded locust scenario on 127.0.0.1, report.

    python loadtests/run_load.py --users 32 --spawn-rate 8 --duration 60 --out runs/load
    python loadtests/run_load.py --url http://127.0.0.1:8000 ...        # against a running server
    python loadtests/run_load.py --ramp 4,16,32,16,4 --step-s 60 ...    # a stepped ramp (autoscaling)

Writes ``summary.json`` and ``summary.md`` (p50/p95/p99, throughput, errors, p99 drift over long
runs, and every 2 s the backbone replica count from /metrics and the server's RSS). Locust runs
as a subprocess: it is never imported next to ray (gevent).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def wait_ready(url: str, headers: dict, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"{url} not ready after {timeout:.0f}s")


def start_server(port: int, log: Path, config: str | None = None, env: dict | None = None,
                 no_ray: bool = False) -> subprocess.Popen:
    """`madx-serve` (Ray, local; or ``--no-ray``: one process) in its own process group, output to ``log``."""
    cmd = [sys.executable, "-m", "serving.main", "--port", str(port), *(["--config", config] if config else []),
           *(["--no-ray"] if no_ray else [])]
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def replicas(url: str, headers: dict) -> int | None:
    """Live backbone replicas: madx_replica_info series in /metrics (replicas that pushed in the last 5 s)."""
    try:
        text = httpx.get(f"{url}/metrics", headers=headers, timeout=5).text
    except httpx.HTTPError:
        return None
    reps = {line.split('replica="')[1].split('"')[0] for line in text.splitlines()
            if line.startswith("madx_replica_info{")}
    return len(reps)


def tree_rss_mb(pid: int | None) -> float | None:
    """Resident memory of the server and all its children (Ray workers, replicas), MiB."""
    if pid is None:
        return None
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return round(total / 2**20, 1)


def p99_drift(csv_prefix: Path, window_s: int = 60) -> dict | None:
    """p99 (locust's sliding window) early vs late in a long run, from the full history CSV."""
    path = Path(f"{csv_prefix}_stats_history.csv")
    if not path.exists():
        return None
    rows = [r for r in csv.DictReader(open(path)) if r["Name"] == "Aggregated" and r["99%"] not in ("N/A", "")]
    if len(rows) < 3:
        return None
    t0 = int(rows[0]["Timestamp"])
    early = [float(r["99%"]) for r in rows if window_s <= int(r["Timestamp"]) - t0 < 2 * window_s]
    t1 = int(rows[-1]["Timestamp"])
    late = [float(r["99%"]) for r in rows if t1 - int(r["Timestamp"]) < window_s]
    if not early or not late:
        return None
    e, l_ = sorted(early)[len(early) // 2], sorted(late)[len(late) // 2]
    return {"p99_ms_minute_2": e, "p99_ms_last_minute": l_, "drift": round(l_ / e, 3) if e else None}


def run_locust(url: str, users: int, spawn: float, seconds: int, csv_prefix: Path, env: dict) -> None:
    cmd = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless", "-u", str(users),
           "-r", str(spawn), "-t", f"{seconds}s", "--host", url, "--csv", str(csv_prefix), "--only-summary",
           "--csv-full-history", "--stop-timeout", "10", "--loglevel", "WARNING"]
    subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL)


def read_stats(csv_prefix: Path) -> dict:
    rows = list(csv.DictReader(open(f"{csv_prefix}_stats.csv")))
    out = {}
    for r in rows:
        name = r["Name"] if r["Name"] != "Aggregated" else "all"
        n = int(r["Request Count"])
        out[name] = {"requests": n, "failures": int(r["Failure Count"]), "rps": round(float(r["Requests/s"]), 2),
                     "p50_ms": float(r["50%"] or 0), "p95_ms": float(r["95%"] or 0), "p99_ms": float(r["99%"] or 0),
                     "mean_ms": round(float(r["Average Response Time"] or 0), 1)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="use a running server instead of starting one")
    ap.add_argument("--config", default=None, help="settings YAML for the server this script starts")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--spawn-rate", type=float, default=8)
    ap.add_argument("--user-rps", type=float, default=2.0, help="requests per second per user")
    ap.add_argument("--duration", type=int, default=60, help="seconds (per step with --ramp)")
    ap.add_argument("--ramp", default=None, help="comma-separated user counts, one step each (--step-s)")
    ap.add_argument("--step-s", type=int, default=60)
    ap.add_argument("--out", type=Path, default=Path("runs/load"))
    ap.add_argument("--ready-timeout", type=float, default=300)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    key = os.environ.get("MADX_API_KEY")
    headers = {"X-API-Key": key} if key else {}
    proc = None
    url = args.url or f"http://127.0.0.1:{args.port}"
    if args.url is None:
        proc = start_server(args.port, args.out / "server.log", args.config)
    try:
        t0 = time.monotonic()
        wait_ready(url, headers, args.ready_timeout, proc)
        startup = time.monotonic() - t0
        env = {**os.environ, "MADX_USER_RPS": str(args.user_rps)}
        samples: list[tuple[float, int | None, float | None]] = []
        stop = threading.Event()

        def sample() -> None:
            s0 = time.monotonic()
            while not stop.is_set():
                samples.append((round(time.monotonic() - s0, 1), replicas(url, headers),
                                tree_rss_mb(proc.pid if proc else None)))
                stop.wait(2)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        steps = [int(x) for x in args.ramp.split(",")] if args.ramp else [args.users]
        results = []
        for i, users in enumerate(steps):
            prefix = args.out / f"step{i}"
            run_locust(url, users, args.spawn_rate, args.step_s if args.ramp else args.duration, prefix, env)
            results.append({"users": users, **read_stats(prefix)["all"], "p99_drift": p99_drift(prefix)})
        if args.ramp:  # watch the scale-down after the last step
            time.sleep(min(90, args.step_s))
        stop.set()
        th.join()
    finally:
        if proc is not None:
            stop_server(proc)
    rss = [m for _, _, m in samples if m is not None]
    summary = {"url": url, "startup_s": round(startup, 1), "user_rps": args.user_rps, "steps": results,
               "rss_mb": {"first": rss[0], "last": rss[-1], "peak": max(rss)} if rss else None,
               "samples_t_replicas_rssmb": samples, "command": " ".join(sys.argv)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = ["| users | requests | failures | req/s | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['users']} | {r['requests']} | {r['failures']} | {r['rps']} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
              f"{r['p99_ms']:.0f} |" for r in results]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"(seconds, backbone replicas, server RSS MiB) every 2 s: {samples}")
    if rss:
        print(f"RSS MiB: first {rss[0]}, last {rss[-1]}, peak {max(rss)}")
    return 0 if all(r["failures"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
