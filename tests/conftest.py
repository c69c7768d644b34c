"""Suite-wide hooks.

Memory: many tests build an engine, run a few requests and drop it. Python frees it all, but glibc
keeps the freed heap pages (each event loop's threads get their own arenas), so the process grew by
about 300 MiB per engine and the suite peaked near 18 GB on a 24 GB machine. After a test that left
the process 256 MiB larger than after the last trim, the garbage is collected and ``malloc_trim``
hands the free pages back (an engine's 300 MiB comes back to the OS; measured with the log below).

With TEST_RSS_LOG=<file> (not MADX_*: the server reads those as settings), each test module appends
one line to <file> when it ends: its name, the process's resident memory then, its peak so far
(MiB, /proc/self/status) and its time.
"""

from __future__ import annotations

import ctypes
import gc
import os
import time
from pathlib import Path

_LOG = os.environ.get("TEST_RSS_LOG")
_TRIM_ABOVE_MIB = 256
_PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 0.0

try:
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc: nothing to trim
    _malloc_trim = None


def _rss_mib() -> float:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE_MIB
    except OSError:
        return 0.0


_trimmed_at = [_rss_mib()]


def _status_mib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return -1


_started: dict[str, float] = {}


def pytest_runtest_setup(item):
    _started.setdefault(item.nodeid.split("::")[0], time.monotonic())


def pytest_runtest_teardown(item, nextitem):
    if _malloc_trim is not None and _rss_mib() > _trimmed_at[0] + _TRIM_ABOVE_MIB:
        gc.collect()
        _malloc_trim(0)
        _trimmed_at[0] = _rss_mib()
    module = item.nodeid.split("::")[0]
    if _LOG and (nextitem is None or nextitem.nodeid.split("::")[0] != module):
        took = time.monotonic() - _started.get(module, time.monotonic())
        with open(_LOG, "a") as f:
            f.write(f"{module}\trss {_status_mib('VmRSS')} MiB\tpeak {_status_mib('VmHWM')} MiB\t{took:.0f} s\n")
