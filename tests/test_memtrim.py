"""The quiet-time trimmer gives freed malloc memory back (unit test in this process, no daemon)."""

from __future__ import annotations

import asyncio
import time

from pycri.memtrim import _current_rss_kib, trim_when_quiet


def test_freed_heap_is_returned_after_work_then_quiet():
    async def scenario() -> tuple[int, int, int]:
        task = asyncio.create_task(trim_when_quiet(interval=0.2, busy_cpu=0.2, quiet_cpu=0.05))
        await asyncio.sleep(0)  # the trimmer takes its starting CPU time
        base = _current_rss_kib()
        blocks = [bytes(2000) + bytes([i % 251]) for i in range(100_000)]  # ~200 MiB through glibc malloc
        pin = bytes(3000)  # allocated last: the heap top stays in use, so free() alone cannot shrink it
        for i in range(len(blocks)):  # busy: well over the CPU threshold
            blocks[i] = None
        del blocks
        t0 = time.process_time()
        while time.process_time() - t0 < 0.3:
            pass
        high = _current_rss_kib()
        await asyncio.sleep(1.0)
        task.cancel()
        low = _current_rss_kib()
        assert pin
        return base, high, low

    base, high, low = asyncio.run(scenario())
    assert high - base > 100_000, (base, high)  # the freed blocks were still resident
    assert high - low > 100_000, (base, high, low)  # and the trimmer gave them back
