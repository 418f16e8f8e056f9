"""ExecSync: a command run in a running container through its pod's monitor, with the pod's exec slots, the
request's timeout and the cap on its output."""

from __future__ import annotations

import asyncio

from pycri import log
from pycri.api import api_pb2 as cri
from pycri.errors import DeadlineExceeded, FailedPrecondition
from pycri.node import MonitorError
from pycri.pods.manager import runtime_request
from pycri.state.records import ContainerRecord, SandboxRecord

_log = log.get("container")
# ExecSync's stdout and stderr together, with the note on a cut: below the 16 MiB message limit of the kubelet's
# CRI client (k8s.io/cri-client, maxMsgSize) and of this server, with room for the response's own fields
EXEC_OUTPUT_CAP = 16 * 1024 * 1024 - 4096
EXEC_CUT_NOTE = b"\n[pycri: stdout and stderr over %d bytes together: the rest was cut]\n" % EXEC_OUTPUT_CAP


async def exec_sync(ctx, rec: ContainerRecord, sandbox: SandboxRecord, cmd: list[str], timeout: int
                    ) -> cri.ExecSyncResponse:
    """Run cmd in the container. Its timeout counts from the request: a wait for one of the pod's exec slots
    (Monitors.exec_slots) uses it up too."""
    # (clamped: an int64 timeout overflows the event loop's clock; found by tests/fuzz)
    seconds = min(timeout, 10 * 365 * 86400) if timeout > 0 else None
    slots = ctx.monitors.exec_slots
    loop = asyncio.get_running_loop()
    asked = loop.time()
    try:
        await slots.acquire(sandbox.id, seconds)
    except TimeoutError:
        _log.warning("exec timed out waiting for a slot of its pod", container_id=rec.id,
                     pod_sandbox_id=sandbox.id, timeout=timeout, limit=slots.limit,
                     pod_execs=slots.waiting(sandbox.id))
        raise DeadlineExceeded(f"command {cmd!r} timed out after {timeout}s waiting behind the "
                               f"{slots.limit} execs in flight in pod {sandbox.id}") from None
    try:
        left = None if seconds is None else max(0.001, seconds - (loop.time() - asked))
        result = await ctx.monitors.call(sandbox.monitor_dir, "exec", rec.id, {"args": list(cmd)},
                                              timeout=left, output_cap=EXEC_OUTPUT_CAP - len(EXEC_CUT_NOTE),
                                              client_timeout=None,
                                              # planned in the daemon, not in the pod's monitor (the
                                              # built-in runtime's only: see runtime/launch/fastinit.py)
                                              target=None if runtime_request(ctx.config, sandbox)
                                              else (rec.pid, rec.bundle))
    except MonitorError as exc:
        raise FailedPrecondition(f"exec in container {rec.id} failed: {exc}") from None
    finally:
        slots.release(sandbox.id)
    if result.timed_out:
        raise DeadlineExceeded(f"command {cmd!r} timed out after {timeout}s")
    stdout, stderr = result.stdout, result.stderr
    if result.truncated or len(stdout) + len(stderr) > EXEC_OUTPUT_CAP:
        room = EXEC_OUTPUT_CAP - len(EXEC_CUT_NOTE)  # (a monitor of an older pycri caps each stream alone)
        stdout = stdout[:room]
        stderr = stderr[:room - len(stdout)] + EXEC_CUT_NOTE
        _log.info("exec output cut", container_id=rec.id, cap=EXEC_OUTPUT_CAP)
    return cri.ExecSyncResponse(stdout=stdout, stderr=stderr, exit_code=result.exit_code)
