"""A real server (shipped store, embedded backbone, uvicorn in a thread) and headless Chromium.

Chromium comes from Debian's packages (`.ci/run` installs it); Playwright drives it through
``executable_path``, so no browser is downloaded.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# the flags a closed network needs: no background connections, no update checks
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
KEY = "browser-key-51c0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """(base url, api key) of a madx-serve app on 127.0.0.1 with an API key set."""
    import uvicorn

    from serving.app import LocalBackend, build_app
    from serving.engine import Engine
    from serving.settings import load_settings

    engine = Engine(load_settings(env={"MADX_API_KEY": KEY}))
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(build_app(LocalBackend(engine), engine.s, engine.m), host="127.0.0.1",
                                        port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.time() + 30
    while not srv.started:
        if time.time() > deadline:
            raise RuntimeError("uvicorn did not start in 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", KEY
    srv.should_exit = True
    t.join(10)


@pytest.fixture(scope="module")
def browser():  # module scope: Playwright's sync API keeps an event loop running while it is open,
    # which would break asyncio.run() in every later test of the session
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context()
    blocked: list[str] = []

    def offline(route):  # the page must need nothing but the server itself
        if route.request.url.startswith("http://127.0.0.1:"):
            return route.continue_()
        blocked.append(route.request.url)
        return route.abort()

    ctx.route("**/*", offline)
    pg = ctx.new_page()
    pg.blocked = blocked
    yield pg
    ctx.close()
