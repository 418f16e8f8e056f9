"""Give freed heap memory back to the system when the daemon goes quiet after a burst of work.

CPython frees objects into glibc's malloc, which keeps the freed pages mapped: after creating and removing
a hundred pods the daemon's RSS stays at its high-water mark although the objects are gone. When the
process has used a fair amount of CPU since the last trim and then almost none for a second, a full
collection and malloc_trim(0) return those pages. Quiet is measured by CPU time, so a kubelet's steady
one-per-second polling does not count as work and does not prevent it.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import resource
import time

from pycri import log

_log = log.get("memtrim")


def _current_rss_kib() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (resource.getpagesize() // 1024)
    except (OSError, ValueError, IndexError):
        return 0


async def trim_when_quiet(interval: float = 1.0, busy_cpu: float = 0.25, quiet_cpu: float = 0.02) -> None:
    """Loop forever: trim after >= busy_cpu CPU-seconds of work followed by an interval under quiet_cpu."""
    try:
        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return
    last_trim = previous = time.process_time()
    while True:
        await asyncio.sleep(interval)
        now = time.process_time()
        if now - previous < quiet_cpu and now - last_trim >= busy_cpu:
            before = _current_rss_kib()
            gc.collect()
            malloc_trim(0)
            after = _current_rss_kib()
            _log.debug("memory trimmed", rss_before_kib=before, rss_after_kib=after)
            now = time.process_time()
            last_trim = now
        previous = now
