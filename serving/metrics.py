"""Prometheus metrics, declared once per process with descriptions and explicit buckets.

In Ray Serve each replica is its own process: the backbone replicas push their exposition text to
the control deployment, and ``GET /metrics`` on the ingress merges all of them (see ``merge``).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.parser import text_string_to_metric_families

disable_created_metrics()  # no *_created series: they double the exposition for no dashboard use

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768)
STACK_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
LOAD_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class _Stage:
    __slots__ = ("child", "t0")

    def __init__(self, child) -> None:
        self.child = child

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.child.inc(time.perf_counter() - self.t0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, replica: str = "local") -> None:
        r = self.registry = registry or CollectorRegistry()
        self.replica = replica
        # ingress (HTTP)
        self.request_latency = Histogram(
            "madx_request_latency_seconds", "HTTP request latency by endpoint, language, task and status",
            ["endpoint", "language", "task", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("madx_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r)
        # backbone replica
        lbl = ["replica"]
        self.batch_rows = Histogram("madx_batch_rows", "rows (windows) per forward pass", lbl, buckets=ROW_BUCKETS, registry=r)
        self.tokens = Counter("madx_tokens", "real (unpadded) tokens through the model", lbl, registry=r)
        self.batch_tokens = Histogram("madx_batch_padded_tokens", "padded tokens per forward pass", lbl,
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.batch_stacks = Histogram("madx_batch_distinct_stacks", "distinct (language, task) stacks per forward pass",
                                      lbl, buckets=STACK_BUCKETS, registry=r)
        self.stack_rows = Counter("madx_stack_rows", "rows served per adapter stack (traffic mix)", ["replica", "stack"],
                                  registry=r)
        self.forward_seconds = Histogram("madx_forward_seconds", "model time per forward pass", lbl,
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Counter(
            "madx_stage_seconds", "seconds spent per serving stage (where a replica's CPU goes outside the model): "
            "detect, split_words, tokenise (+ windows), plan, forward (pad + model + copy out), decode; serialise "
            "is the ingress's", ["replica", "stage"], registry=r)
        self.queue_rows = Gauge("madx_queue_rows", "windows waiting for a batch", lbl, registry=r)
        self.rejected = Counter("madx_overload_rejections", "requests refused with 503 because the queue was full", lbl,
                                registry=r)
        self.requested = Counter("madx_requested_stacks", "texts whose request named its adapter stack, by task and "
                                 "route ('explicit': named adapters)", ["replica", "task", "route"], registry=r)
        self.cancelled = Counter("madx_cancelled_windows", "queued windows released because their request was "
                                 "cancelled or timed out before they ran", lbl, registry=r)
        self.cache = Counter("madx_adapter_cache", "adapter lookups by result (hit/miss) and tier it came from",
                             ["replica", "result", "tier"], registry=r)
        self.load_seconds = Histogram("madx_adapter_load_seconds", "time to make an adapter resident, by source tier",
                                      ["replica", "tier"], buckets=LOAD_BUCKETS, registry=r)
        self.resident = Gauge("madx_adapters_resident", "adapters resident on the device", lbl, registry=r)
        self.info = Gauge("madx_replica_info", "1 per live backbone replica, labelled with its Ray node and process",
                          ["replica", "node", "pid"], registry=r)

    def stage(self, name: str):
        """``with metrics.stage("tokenise"): ...`` adds the block's wall time to madx_stage_seconds."""
        return _Stage(self.stage_seconds.labels(self.replica, name))

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def merge(texts: list[str]) -> str:
    """Merge several Prometheus expositions (one per process) into one valid exposition: each
    family once, with all processes' samples (they differ by their ``replica`` label)."""
    fams: dict[str, tuple[str, str, list]] = {}
    for t in texts:
        for f in text_string_to_metric_families(t):
            entry = fams.setdefault(f.name, (f.type, f.documentation, []))
            entry[2].extend(f.samples)
    lines = []
    for name, (typ, doc, samples) in fams.items():
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {typ}")
        seen = set()
        for s in samples:
            labels = ",".join(f'{k}="{_esc(v)}"' for k, v in sorted(s.labels.items()))
            key = (s.name, labels)
            if key in seen:
                continue
            seen.add(key)
            lines.append(f"{s.name}{{{labels}}} {_num(s.value)}" if labels else f"{s.name} {_num(s.value)}")
    return "\n".join(lines) + "\n"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))
