"""`madx-serve`: start the server on this machine.

    madx-serve                       Ray Serve, local Ray (dashboard off), embedded backbone + default adapters
    madx-serve --config my.yaml      settings from YAML (MADX_* env vars override it)
    madx-serve --no-ray              one process (uvicorn + in-process engine), same HTTP API

Settings are validated before anything starts; an error names the field and the rule.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
import threading
import time


def _parse(argv):
    ap = argparse.ArgumentParser(prog="madx-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="settings YAML (default: $MADX_CONFIG)")
    ap.add_argument("--host", default=None)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--no-ray", action="store_true", help="single process, no Ray")
    ap.add_argument("--check", action="store_true", help="validate settings and the adapter store, then exit")
    return ap.parse_args(argv)


LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def port_problem(host: str, port: int) -> str | None:
    """Why (host, port) cannot be served, in one line; None when it can be bound now."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return f"host {host!r} does not resolve ({e.strerror})"
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and Ray's proxy bind
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return (f"port {port} on {host} is already in use (another madx-serve or Ray Serve?); "
                        f"stop it or choose another port with --port or MADX_PORT")
            if e.errno == errno.EACCES:
                return f"no permission to listen on port {port} on {host} (ports below 1024 need privileges)"
            return f"cannot listen on {host}:{port}: {e.strerror}"
    return None


def _step(i: int, n: int, what: str) -> float:
    print(f"[{i}/{n}] {what}...", flush=True)
    return time.monotonic()


def check(settings) -> int:
    """``--check``: settings, store, backbone and one request per task, with progress."""
    import asyncio

    from madx.artifacts import ArtifactError

    from .engine import Engine

    print(f"[1/3] settings ok: store {settings.adapter_store}, backbone {settings.backbone}", flush=True)
    t0 = _step(2, 3, "loading the backbone and verifying every adapter (sha256, kind, task)")
    try:
        engine = Engine(settings)
    except (ArtifactError, OSError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    d = engine.describe()
    print(f"      backbone {d['backbone']}, languages {d['languages']}, tasks {d['tasks']}, "
          f"refused {d['fallback']['refused_adapters'] or 'none'} ({time.monotonic() - t0:.1f}s)", flush=True)
    t0 = _step(3, 3, "one request per task")
    if "ner" in d["tasks"]:
        r = asyncio.run(engine.ner(["Angela Merkel visited Nairobi."], None))["results"][0]
        print(f"      ner: {[(e['text'], e['label']) for e in r['entities']]} via {r['stack']}", flush=True)
    if "qa" in d["tasks"]:
        a = asyncio.run(engine.qa("Where is Safaricom based?", "Safaricom is a Kenyan company based in Nairobi.", None))
        print(f"      qa: {a['answers'][0]['text'] if a['answers'] else None!r} via {a['stack']}", flush=True)
    print(f"ok ({time.monotonic() - t0:.1f}s)")
    return 0


def precision_problem(settings) -> str | None:
    """A backbone precision this machine's CPU would run slower than fp32, in one line (None if fine)."""
    if settings.allow_slow_precision or settings.backbone_dtype in ("auto", "fp32"):
        return None
    import torch

    from madx.precision import slow_precision

    on_gpu = settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available())
    problem = None if on_gpu else slow_precision(settings.backbone_dtype, "cpu")
    return f"{problem} (or set allow_slow_precision)" if problem else None


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before the server was up: one line, not a traceback
        _stop_children()
        print("madx-serve: interrupted during start-up; stopped", file=sys.stderr, flush=True)
        return 130


def _stop_children() -> None:
    """Stop every process this one started (a local Ray's GCS, raylet, workers) and wait for them: a
    start interrupted half-way leaves nothing behind, whatever Ray had started so far."""
    import psutil

    kids = psutil.Process().children(recursive=True)
    for p in kids:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(kids, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def _main(argv: list[str] | None) -> int:
    args = _parse(argv)
    from .settings import SettingsError, load_settings

    over = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = load_settings(args.config, **over)
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from madx.artifacts import ArtifactError

    if settings.allowed_hosts is None and settings.host in LOOPBACK:  # a page elsewhere cannot reach it by DNS rebinding
        settings = settings.model_copy(update={"allowed_hosts": sorted(LOOPBACK)})
    url = f"http://{settings.host}:{settings.port}"
    if args.check:
        return check(settings)
    problem = port_problem(settings.host, settings.port) or precision_problem(settings)  # before minutes of loading
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.no_ray:
        from .engine import Engine

        try:
            engine = Engine(settings)
        except (ArtifactError, OSError, RuntimeError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return _serve_local(engine, settings, url)
    return _serve_ray(settings, url)


def local_server(engine, settings):
    """The single-process HTTP server: uvicorn over the API, with connections that must send a whole
    request within ``limits.read_timeout_s`` (serving/connections.py)."""
    import uvicorn

    from .app import LocalBackend, build_app
    from .connections import guarded_http

    return uvicorn.Server(uvicorn.Config(build_app(LocalBackend(engine), settings, engine.m), host=settings.host,
                                         port=settings.port, log_level="critical", access_log=False,
                                         http=guarded_http(settings.limits.read_timeout_s)))


def _serve_local(engine, settings, url: str) -> int:
    server = local_server(engine, settings)

    def announce() -> None:  # the address is printed once uvicorn listens on it, never before
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            print(f"madx-serve (single process) on {url}  demo: {url}/demo  docs: {url}/docs  (Ctrl-C stops)",
                  flush=True)

    threading.Thread(target=announce, daemon=True).start()
    server.run()
    if not server.started:  # lost a race for the port after the check, or another bind error
        print(f"error: {port_problem(settings.host, settings.port) or 'the HTTP server did not start'}", file=sys.stderr)
        return 2
    return 0


def _serve_ray(settings, url: str) -> int:
    # token authentication on Ray's control plane: a local start makes its own token (~/.ray/auth_token)
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    local = "RAY_ADDRESS" not in os.environ
    if local:
        # A local start is one node: Ray's own ports (GCS, raylet, workers, metrics exporters) listen on
        # 127.0.0.1 only, and only the app's port follows --host. Ray takes the node's address from
        # this switch (off: the loopback address); it must be set before Ray is imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray import serve

    # fail fast with a clear message before Ray starts replicas that would crash-loop
    from madx.artifacts import ArtifactError, read_manifest

    from .deployments import build

    try:
        read_manifest(settings.adapter_store)
        if not settings.adapter_store.is_dir():
            raise ArtifactError(f"adapter store {str(settings.adapter_store)!r} is not a directory")
    except (ArtifactError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        ray.init(address=os.environ.get("RAY_ADDRESS", "local"), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    except Exception as e:  # noqa: BLE001 - one line, not Ray's traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"error: Ray could not start ({type(e).__name__}: {first[:300]}); try --no-ray for one process",
              file=sys.stderr)
        return 2
    # Serve's INFO lines ("Started Serve in namespace", "Connecting to existing Serve app ... New
    # http_options will not be applied": serve.run reconnecting to the controller serve.start made)
    # are about the start itself, which prints its own line when ready: not shown
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build(settings), name="madx", route_prefix="/", blocking=False)
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"error: Ray Serve could not start the app ({type(e).__name__}: {first[:300]})", file=sys.stderr)
        _stop_ray(serve, ray, local)
        return 2
    except KeyboardInterrupt:
        _stop_ray(serve, ray, local)
        raise
    print(f"madx-serve ready in {time.monotonic() - t0:.0f}s on {url}  demo: {url}/demo  docs: {url}/docs  "
          f"(Ctrl-C stops)", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the shutdown short
    _stop_ray(serve, ray, local)
    print("madx-serve: stopped", flush=True)
    return 0


def _stop_ray(serve, ray, local: bool) -> None:
    """A local Ray goes with its processes (shutting Serve down first only makes the raylet report its
    controller's killed shutdown task); on a cluster this app is deleted and the cluster left alone."""
    try:
        if not local:
            serve.delete("madx")
        ray.shutdown()
    finally:
        if local:
            _stop_children()


if __name__ == "__main__":
    sys.exit(main())
