"""`madx-serve` in Ray mode as a user runs it: in a terminal (a pseudo-terminal here), with the tiny
store, interrupted by Ctrl-C. Ray's own ports stay on the loopback address; Ctrl-C at any moment is
one line, exit code 130 during start-up or 0 once ready, and no process of it is left behind."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import socket
import time

import psutil
import pytest

from ..serving.tiny_store import BACKBONE

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _lines(text: str) -> list[str]:
    """What a user sees: the terminal's echo of Ctrl-C (^C) and colour codes left out, blank lines too."""
    return [ln.strip() for ln in ANSI.sub("", text.replace("^C", "")).splitlines() if ln.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Terminal:
    """`madx-serve ARGS` on a pseudo-terminal: Ctrl-C is the terminal's, as a user's would be."""

    def __init__(self, store, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local start, as a user's
        env.update(MADX_BACKBONE=BACKBONE, MADX_ADAPTER_STORE=str(store), PYTHONUNBUFFERED="1")
        exe = shutil.which("madx-serve")
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: exec at once, nothing else
            # as a shell does for a job it runs in the foreground: Ctrl-C and Ctrl-\ at their defaults
            # (a suite started in the background, `cmd &` without job control, ignores both, and an
            # ignored signal stays ignored across exec)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGQUIT, signal.SIG_DFL)
            os.execve(exe, [exe, *args], env)
        self.out = b""

    def read_until(self, pattern: bytes | None, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end and (pattern is None or pattern not in self.out):
            if select.select([self.fd], [], [], 0.2)[0]:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # the child closed the terminal
                    return pattern is not None and pattern in self.out
                if not data:
                    break
                self.out += data
        return pattern is not None and pattern in self.out

    def ctrl_c(self) -> None:
        os.write(self.fd, b"\x03")

    def finish(self, timeout: float = 60) -> int:
        self.read_until(None, timeout)
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)

    def lines_after(self, marker: bytes) -> list[str]:
        return _lines(self.out.split(marker, 1)[1].decode(errors="replace"))


def _gone(pids: list[int], timeout: float = 15) -> list[str]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not left:
            return []
        time.sleep(0.3)
    return [" ".join(psutil.Process(p).cmdline())[:120] for p in left if psutil.pid_exists(p)]


def _grpc_refuses_without_token(port: int) -> bool:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")
        try:
            call(b"", timeout=10)
        except grpc.RpcError as e:
            return e.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


def _listening(pids: list[int]) -> set[tuple[str, int, str]]:
    out = set()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for c in proc.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.add((c.laddr.ip, c.laddr.port, proc.name()))
        except psutil.Error:
            pass
    return out


def test_ray_listens_on_loopback_only_and_ctrl_c_after_ready_is_one_line(tiny_store_dir):
    """Was: GCS, raylet and worker ports on all interfaces and three Prometheus endpoints on 0.0.0.0;
    on Ctrl-C a raylet 'graceful_shutdown failed' line (and Serve's INFO line at start)."""
    port = _free_port()
    term = Terminal(tiny_store_dir, "--host", "0.0.0.0", "--port", str(port))
    assert term.read_until(b"madx-serve ready", 180), term.out.decode(errors="replace")[-2000:]
    kids = [p.pid for p in psutil.Process(term.pid).children(recursive=True)]
    listening = _listening([term.pid, *kids])
    public = sorted(x for x in listening if x[0] not in LOOPBACK and x[1] != port)
    assert any(p == port for _, p, _ in listening)
    # Ray 2.60's Serve replicas bind their inter-deployment gRPC server to [::] in code (replica.py),
    # with no setting; that server refuses calls without the cluster's token. Nothing else is public.
    assert [x for x in public if not x[2].startswith("ray::ServeReplica")] == [], public
    for _, replica_port, _ in public:
        assert _grpc_refuses_without_token(replica_port), replica_port
    before = term.out.decode(errors="replace")
    assert "Started Serve" not in before and "INFO" not in before, before
    term.ctrl_c()
    code = term.finish()
    assert code == 0 and term.lines_after(b"(Ctrl-C stops)") == ["madx-serve: stopped"], term.out[-1500:]
    assert _gone(kids) == []


@pytest.mark.parametrize("after_s", [3.0, 9.0])
def test_ctrl_c_during_start_up_is_one_line_and_leaves_nothing(tiny_store_dir, after_s):
    """Was: a 20-line Ray traceback (Ctrl-C inside ray.init) and exit code -2."""
    term = Terminal(tiny_store_dir, "--port", str(_free_port()))
    term.read_until(b"madx-serve ready", after_s)
    kids = [p.pid for p in psutil.Process(term.pid).children(recursive=True)]
    assert b"ready" not in term.out, "the start was over before the interrupt: nothing tested"
    term.ctrl_c()
    code = term.finish()
    text = term.out.decode(errors="replace")
    assert code == 130 and "Traceback" not in text, text[-2000:]
    assert _lines(text) == ["madx-serve: interrupted during start-up; stopped"], text
    assert _gone(kids) == []


@pytest.fixture(scope="module")
def tiny_store_dir(tmp_path_factory):
    from ..serving.tiny_store import make_store

    return make_store(tmp_path_factory.mktemp("pty-store"))
