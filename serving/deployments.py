"""Ray Serve deployments: Ingress (FastAPI) -> Backbone (one frozen encoder per replica) + Control.

- ``Backbone``: wraps one ``Engine``; requests from all ingress replicas meet in its batcher.
- ``Control`` (one replica, no CPU reserved): runtime adapter changes as a versioned log that every
  backbone replica applies within ``SYNC_S`` seconds, and the replicas' metrics for ``/metrics``.
- ``Ingress``: the HTTP API of ``app.py``, with handles passed by ``.bind()``.
- ``Server`` (``topology: single``): the HTTP API and the engine in the same replica, so a request
  crosses one hop (proxy -> replica) instead of two (proxy -> ingress -> backbone handle).

``build(settings)`` returns the bound application; ``app_builder`` is the import path for
``serve run`` / ``serve deploy`` configs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from ray import serve

from .app import build_app
from .batcher import Overloaded
from .engine import Engine, RequestError
from .metrics import Metrics
from .settings import Settings, load_settings

SYNC_S = 1.0
log = logging.getLogger("madx.serving")
QUIET = {"enable_access_log": False, "log_level": "WARNING"}  # access logs to the driver cost ~1/3 of throughput


def settings_payload(s: Settings) -> dict[str, Any]:
    """Settings as plain data for replicas (the API key included, which model_dump would mask)."""
    d = s.model_dump(mode="json")
    d["api_key"] = s.api_key.get_secret_value() if s.api_key else None
    return d


def _envelope(status: int, message: str) -> dict[str, Any]:
    return {"error": {"status": status, "message": message}}


async def _guard(coro) -> dict[str, Any]:
    try:
        return {"ok": await coro}
    except RequestError as e:
        return _envelope(e.status, e.message)
    except Overloaded as e:
        return {"overloaded": str(e)}


def _unwrap(env: dict[str, Any]) -> Any:
    if "ok" in env:
        return env["ok"]
    if "overloaded" in env:
        raise Overloaded(env["overloaded"])
    raise RequestError(env["error"]["status"], env["error"]["message"])


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, logging_config=QUIET)
class Control:
    def __init__(self) -> None:
        self.version = 0
        self.ops: list[tuple[int, dict[str, Any]]] = []
        self.snapshots: dict[str, tuple[float, str]] = {}
        self.applied: dict[str, int] = {}  # replica -> last control version it applied
        self.failed: dict[str, dict[int, str]] = {}  # replica -> {version: why it could not apply that op}

    def record(self, op: dict[str, Any]) -> int:
        self.version += 1
        self.ops.append((self.version, op))
        return self.version

    def since(self, version: int) -> list[tuple[int, dict[str, Any]]]:
        return [(v, op) for v, op in self.ops if v > version]

    def push_metrics(self, replica: str, text: str, version: int = 0, failed: dict[int, str] | None = None) -> None:
        self.snapshots[replica] = (time.time(), text)
        self.applied[replica] = version
        if failed:
            self.failed.setdefault(replica, {}).update(failed)

    def _live(self) -> list[str]:
        now = time.time()
        return [r for r, (ts, _) in self.snapshots.items() if now - ts < 5 * SYNC_S]

    def metrics_texts(self, exclude: str | None = None) -> list[str]:
        return [self.snapshots[r][1] for r in self._live() if r != exclude]

    def progress(self, version: int) -> dict[str, Any]:
        live = self._live()
        failed = {r: self.failed[r][version] for r in live if version in self.failed.get(r, {})}
        return {"live": len(live), "applied": sum(self.applied.get(r, 0) >= version for r in live) - len(failed),
                "failed": failed}


class BackboneReplica:
    """One Engine per replica, following the Control log. Served either behind the Ingress
    (``Backbone``, topology two_hop) or as the HTTP ingress itself (``Server``, topology single)."""

    async def __init__(self, settings: dict[str, Any], control) -> None:
        try:
            rid = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside Serve (tests)
            rid = "local"
        self.replica = rid
        self.engine = Engine(Settings.model_validate(settings), Metrics(replica=rid))
        try:
            import ray

            node = ray.get_runtime_context().get_node_id()[:12]
        except Exception:  # noqa: BLE001
            node = "local"
        self.engine.m.info.labels(rid, node, str(os.getpid())).set(1)
        self.control = control
        self.version = 0
        self.failed: dict[int, str] = {}  # ops of the control log this replica could not apply
        self._sync = asyncio.get_running_loop().create_task(self._sync_loop())

    async def sync_once(self) -> None:
        """Apply the control log's new ops. An op this replica cannot apply is recorded (reported to the
        admin call and in /metrics) and makes the replica unhealthy, so Serve replaces it with one that
        starts from the store and the log; it is never retried forever, never skipped silently."""
        for v, op in await self.control.since.remote(self.version):
            if op.get("origin") != self.replica:
                try:
                    await self._apply(op)
                except Exception as e:  # noqa: BLE001 - any failure: recorded, reported, unhealthy
                    msg = e.message if isinstance(e, RequestError) else f"{type(e).__name__}: {e}"
                    self.failed[v] = msg[:500]
                    log.error("replica %s could not apply control op %d %s: %s", self.replica, v, op, msg)
            self.version = v
        await self.control.push_metrics.remote(self.replica, self.engine.m.text(), self.version, self.failed)

    async def _sync_loop(self) -> None:
        while True:
            try:
                await self.sync_once()
            except Exception:  # noqa: BLE001 - the control replica is unreachable: Serve restarts it; retry
                log.warning("control sync failed", exc_info=True)
            await asyncio.sleep(SYNC_S)

    async def _apply(self, op: dict[str, Any]) -> dict[str, Any]:
        if op["op"] == "load":
            return await self.engine.admin_load(op["name"], op.get("path"))
        return await self.engine.admin_unload(op["name"])

    async def ner(self, texts, language, return_tokens, stack=None):
        return await _guard(self.engine.ner(texts, language, return_tokens, stack))

    async def qa(self, question, context, language, top_k, max_answer_tokens, stack=None):
        return await _guard(self.engine.qa(question, context, language, top_k, max_answer_tokens, stack))

    async def describe(self):
        return self.engine.describe()

    async def admin(self, op: dict[str, Any]):
        res = await _guard(self._apply(op))
        if "ok" in res:  # the other replicas follow through the control log
            v = await self.control.record.remote({**op, "origin": self.replica})
            self.version = max(self.version, v)  # applied here already
            res["ok"]["version"] = v
        return res

    def check_health(self) -> None:
        sync_died = self._sync.done() and (self._sync.cancelled() or self._sync.exception() is not None)
        if not self.engine.ready or sync_died:
            raise RuntimeError("backbone replica is not healthy")
        if self.failed:
            raise RuntimeError(f"backbone replica could not apply admin ops {sorted(self.failed)}: it diverged from "
                               f"the others and is replaced")


Backbone = serve.deployment(ray_actor_options={"num_cpus": 1}, logging_config=QUIET,
                            health_check_period_s=5)(type("Backbone", (BackboneReplica,), {}))


class ReplicaBackend:
    """The app's backend inside a ``Server`` replica: the engine is in this process (no handle call,
    no second serialisation); admin ops reach the other replicas through the Control log."""

    def __init__(self, replica: BackboneReplica) -> None:
        self.r = replica

    async def ner(self, texts, language, return_tokens, stack=None):
        return await self.r.engine.ner(texts, language, return_tokens, stack)

    async def qa(self, question, context, language, top_k, max_answer_tokens, stack=None):
        return await self.r.engine.qa(question, context, language, top_k, max_answer_tokens, stack)

    async def describe(self):
        return self.r.engine.describe()

    async def ready(self):
        return bool(self.r.engine.ready)

    async def _admin(self, op: dict[str, Any]) -> dict[str, Any]:
        return await _wait_applied(self.r.control, _unwrap(await self.r.admin(op)))

    async def admin_load(self, name, path):
        return await self._admin({"op": "load", "name": name, "path": path})

    async def admin_unload(self, name):
        return await self._admin({"op": "unload", "name": name})

    async def metrics_texts(self):  # this replica's own registry is the app's; the others' from Control
        return await self.r.control.metrics_texts.remote(self.r.replica)


class _ServerReplica(BackboneReplica):
    def __serve_build_asgi_app__(self):
        return build_app(ReplicaBackend(self), self.engine.s, self.engine.m, cancel_on_disconnect=False)  # Serve does


Server = serve.deployment(ray_actor_options={"num_cpus": 1}, logging_config=QUIET, health_check_period_s=5)(
    serve.ingress()(type("Server", (_ServerReplica,), {})))


async def _wait_applied(control, res: dict[str, Any]) -> dict[str, Any]:
    """After one replica applied (and validated) an admin op: wait until every live replica has it."""
    deadline = time.monotonic() + 10 * SYNC_S
    while True:
        p = await control.progress.remote(res["version"])
        if p["applied"] >= p["live"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(SYNC_S / 4)
    res["replicas"] = p
    if p.get("failed"):  # applied on the replica that took the call, not on these: they are replaced
        raise RequestError(502, f"{res.get('loaded') or res.get('unloaded')!r}: applied on {p['applied']} of "
                                f"{p['live']} replicas; {len(p['failed'])} could not apply it and are being "
                                f"replaced: {p['failed']}")
    return res


class RayBackend:
    def __init__(self, backbone, control, retries: int = 2) -> None:
        self.backbone, self.control, self.retries = backbone, control, retries

    async def _call(self, method: str, *args) -> Any:
        """NER and QA are pure functions of the request, so a call that died with its replica
        (killed, OOM, node lost) is retried on another one, ``retries`` times."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        for attempt in range(self.retries + 1):
            try:
                return _unwrap(await getattr(self.backbone, method).remote(*args))
            except (ActorDiedError, ActorUnavailableError, RayActorError):
                if attempt == self.retries:
                    raise
                log.warning("backbone replica failed during %s; retrying (%d/%d)", method, attempt + 1, self.retries)
                await asyncio.sleep(0.2 * (attempt + 1))

    async def ner(self, texts, language, return_tokens, stack=None):
        return await self._call("ner", texts, language, return_tokens, stack)

    async def qa(self, question, context, language, top_k, max_answer_tokens, stack=None):
        return await self._call("qa", question, context, language, top_k, max_answer_tokens, stack)

    async def describe(self):
        return await self.backbone.describe.remote()

    async def ready(self):
        await asyncio.wait_for(self.backbone.describe.remote(), 5)
        return True

    async def _admin(self, op: dict[str, Any]) -> dict[str, Any]:
        """Apply on one replica (which validates it), then wait until every live replica has it."""
        return await _wait_applied(self.control, _unwrap(await self.backbone.admin.remote(op)))

    async def admin_load(self, name, path):
        return await self._admin({"op": "load", "name": name, "path": path})

    async def admin_unload(self, name):
        return await self._admin({"op": "unload", "name": name})

    async def metrics_texts(self):
        return await self.control.metrics_texts.remote()


@serve.deployment(ray_actor_options={"num_cpus": 0}, logging_config=QUIET)
@serve.ingress()
class Ingress:
    def __init__(self, settings: dict[str, Any], backbone, control) -> None:
        self.settings = Settings.model_validate(settings)
        self.metrics = Metrics(replica="ingress")
        self.backend = RayBackend(backbone, control, self.settings.replica_failure_retries)

    def __serve_build_asgi_app__(self):
        return build_app(self.backend, self.settings, self.metrics, cancel_on_disconnect=False)  # Serve does


def build(settings: Settings):
    """The bound Serve application for ``settings``."""
    payload = settings_payload(settings)
    control = Control.bind()
    opts: dict[str, Any] = {
        "max_ongoing_requests": settings.backbone_max_ongoing_requests,
        "ray_actor_options": {"num_cpus": settings.backbone_num_cpus if settings.backbone_num_cpus is not None
                              else min(4, os.cpu_count() or 1), "num_gpus": settings.backbone_num_gpus},
    }
    if settings.autoscaling is not None:
        opts["autoscaling_config"] = settings.autoscaling.model_dump()
    else:
        opts["num_replicas"] = settings.backbone_replicas
    if settings.max_replicas_per_node is not None:
        opts["max_replicas_per_node"] = settings.max_replicas_per_node
    if settings.topology == "single":  # each replica is ingress and backbone: one hop from the proxy
        return Server.options(**opts).bind(payload, control)
    backbone = Backbone.options(**opts).bind(payload, control)
    return Ingress.options(max_ongoing_requests=settings.ingress_max_ongoing_requests).bind(payload, backbone, control)


def app_builder(args: dict[str, Any]):
    """``serve run serving.deployments:app_builder config=deploy/serve.yaml`` entry point: ``args`` may
    name a settings YAML (``config``) and override fields."""
    args = dict(args or {})
    return build(load_settings(args.pop("config", None), **args))
