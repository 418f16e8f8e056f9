"""The interface between the monitor and what makes a container's processes, as CRI-O's RuntimeImpl.

The monitor (server.py) keeps a container's record, stdio, log, OOM watch and exit; a runner makes and drives its
processes: the built-in launcher (builtin.py) or an external OCI runtime (ocirunner.py). One runner per
container; it holds what only it needs. The cgroup block both share (taking the container's cgroup, counting its
OOM kills) and the one signal loop live here.
"""
from __future__ import annotations

import os

from runtime import cgroups
from runtime.monitor import oom


class RequestError(Exception):
    """A request the monitor refuses; the message goes back to the client."""


def kill_quietly(pids, sig: int) -> None:
    """Signal each process; one already gone is no error."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class Runner:
    """What the monitor asks of a container's runner. m is the monitor (its _later, _watch, log, oom watch,
    spares), c the container (server.Container)."""

    own_pty = False         # the runner makes a terminal's pty itself and hands back its master
    spare_hint: bool | None = None  # after a start: a spare pycri-init to keep (in a new pid ns or not)

    def __init__(self, m, c):
        self.m = m
        self.c = c

    @property
    def warnings(self) -> list[str]:
        return []

    def create(self, req: dict, log_path: str | None, max_line: int, stdio, console) -> tuple[float, float, float]:
        """Make the container's process, stopped before the user's program; sets c.pid, c.start_time, c.cgroup,
        writes state.json. Returns the perf_counter times before planning, before the clone, after it."""
        raise NotImplementedError

    def start(self) -> None:
        """Let the created process run; a failure leaves it created."""
        raise NotImplementedError

    def started(self) -> None:
        """After "running" is recorded: the process's exec (LaunchError: it failed)."""

    def kill(self, sig: int, all_processes: bool) -> None:
        raise NotImplementedError

    def exec(self, process: dict, stdio, console, init: dict | None) -> tuple[int, int | None]:
        """A process in the running container, the monitor's child to reap; returns (pid, pty master or None)."""
        raise NotImplementedError

    def update(self, resources: dict) -> list[str]:
        """New cgroup resources; returns warnings."""
        return self.c.cgroup.update(resources)

    def hooks(self, kinds: tuple[str, ...], status: str, *, fatal: bool) -> None:
        """The spec's OCI hooks of these kinds, if the monitor runs them."""

    def exited(self, exit_code: int, sig: int) -> int:
        """The container's process was reaped: the exit code to record."""
        return exit_code

    def abort(self) -> bool:
        """Stop a created container whose process never ran; False if it must be killed as a running one."""
        return False

    def release(self) -> None:
        """Teardown: what the runner holds for the container."""

    # ------------------------------------------------------------ shared by both runners
    def take_cgroup(self, cg: cgroups.Cgroup, cg_path: str) -> None:
        """Make cg the container's (refused if processes are in it already), with the spec's resources applied:
        what cannot be applied is a warning."""
        c = self.c
        if cg.exists() and cg.pids():
            raise RequestError(f"cgroup {cg_path} is in use by other processes")
        c.cgroup = cg
        cg.create()
        for w in cg.apply((c.spec.get("linux") or {}).get("resources")):
            self.m._later(self.m.log.warning, "cgroup.warning", container_id=c.id, warning=w)

    def count_ooms(self) -> None:
        """OOM kills in the container's cgroup count from now, and are watched for."""
        self.c.oom_base = self.c.cgroup.oom_kills()
        oom.watch(self.m.sel, self.c)

    def kill_cgroup(self, sig: int) -> None:
        """Signal every process of the container's cgroup."""
        if self.c.cgroup:
            kill_quietly(self.c.cgroup.pids(), sig)
