"""The process's one thread for torch work.

PyTorch's CPU wheels use GNU OpenMP, which keeps a separate worker pool for every thread that runs
a parallel region. Once two threads have done so, the process manages more OpenMP threads than it
has cores and libgomp switches every pool to near-zero spinning: each parallel op then pays a futex
wake-up. Measured on the 2-core CPU machine (docs/BENCHMARKS.md): elementwise ops 5x slower and the
served forward pass 1.5x slower. So everything that runs torch kernels of any size in a serving
process (loading the backbone and adapters, forward passes, admin loads) runs on this single thread;
the event loop only does tokenisation, small decoding and I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_thread_ident: int | None = None


def _mark() -> None:
    global _thread_ident
    _thread_ident = threading.get_ident()


def executor() -> ThreadPoolExecutor:
    """The shared single-thread executor (created on first use, lives as long as the process)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(1, thread_name_prefix="madx-compute", initializer=_mark)
        return _executor


def on_compute_thread() -> bool:
    return _thread_ident is not None and threading.get_ident() == _thread_ident


def run_sync(fn: Callable[..., T], *args) -> T:
    """Run ``fn(*args)`` on the compute thread and wait for it (directly when already on it)."""
    if on_compute_thread():
        return fn(*args)
    return executor().submit(fn, *args).result()
