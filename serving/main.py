"""`madx-serve`: start the server on this machine.

    madx-serve                       Ray Serve, local Ray (dashboard off), embedded backbone + default adapters
    madx-serve --config my.yaml      settings from YAML (MADX_* env vars override it)
    madx-serve --no-ray              one process (uvicorn + in-process engine), same HTTP API

Settings are validated before anything starts; an error names the field and the rule.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time


def _parse(argv):
    ap = argparse.ArgumentParser(prog="madx-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="settings YAML (default: $MADX_CONFIG)")
    ap.add_argument("--host", default=None)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--no-ray", action="store_true", help="single process, no Ray")
    ap.add_argument("--check", action="store_true", help="validate settings and the adapter store, then exit")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from .settings import SettingsError, load_settings

    over = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = load_settings(args.config, **over)
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from madx.artifacts import ArtifactError

    url = f"http://{settings.host}:{settings.port}"
    if args.check or args.no_ray:
        from .engine import Engine

        try:
            engine = Engine(settings)
        except (ArtifactError, OSError, RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if args.check:
            d = engine.describe()
            print(f"ok: backbone {d['backbone']}, languages {d['languages']}, tasks {d['tasks']}, "
                  f"refused {d['fallback']['refused_adapters'] or 'none'}")
            return 0
        import uvicorn

        from .app import LocalBackend, build_app

        print(f"madx-serve (single process) on {url}  docs: {url}/docs", flush=True)
        uvicorn.run(build_app(LocalBackend(engine), settings, engine.m), host=settings.host, port=settings.port,
                    log_level="warning", access_log=False)
        return 0
    return _serve_ray(settings, url)


def _serve_ray(settings, url: str) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
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
    ray.init(address=os.environ.get("RAY_ADDRESS", "local"), include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    t0 = time.monotonic()
    serve.run(build(settings), name="madx", route_prefix="/", blocking=False)
    print(f"madx-serve ready in {time.monotonic() - t0:.0f}s on {url}  docs: {url}/docs  (Ctrl-C stops)", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
