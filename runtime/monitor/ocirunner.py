"""An external OCI runtime (runc, crun; oci.py drives its command line) as the monitor's runner: the runtime makes
the container's processes, its pty for a terminal, and runs the spec's hooks; the monitor still reaps them (it
is their subreaper), reads their output and records their exit."""
from __future__ import annotations

import os
import time

from runtime import cgroups
from runtime.host import linux
from runtime.monitor import oci
from runtime.monitor.runner import RequestError, Runner
from runtime.monitor.stdio import nonblock


class OciRunner(Runner):
    own_pty = True

    def __init__(self, m, c, runtime: dict):
        super().__init__(m, c)
        rt = oci.check_request(runtime)
        self.oci = oci.OciRuntime(rt["path"], c.id, c.dir, c.bundle, c.spec, rt["cgroup_manager"] == "pycri")

    @property
    def warnings(self) -> list[str]:
        return self.oci.warnings

    def create(self, req, log_path, max_line, stdio, console):
        """Rootfs, `create`, then our view of the container (pty master, cgroup for stats and OOM, log file,
        state.json) as the built-in runner leaves it."""
        c, rt = self.c, self.oci
        t0 = time.perf_counter()
        os.mkdir(c.dir, 0o700)
        rt.fit_spec()
        rt.write_config()
        rt.mount_rootfs(req.get("overlay"))
        if log_path:
            c.open_log(log_path, max_line)
        cg_path = (c.spec.get("linux") or {}).get("cgroupsPath")
        if cg_path and rt.own_cgroups:  # as the built-in runner does; the runtime joins it before it execs
            cg = cgroups.open_cgroup(cg_path)
            self.take_cgroup(cg, cg_path)
            joined = cg.make_joinable()
            rt.cgroup_tasks = cg.self_attach_paths()
            if not rt.cgroup_tasks:
                joined()
                raise RequestError("cgroup_manager \"pycri\" needs a cgroup the runtime can join by itself")
        else:
            joined = None
        t1 = time.perf_counter()
        try:
            c.pid, master = rt.create(stdio, bool((c.spec.get("process") or {}).get("terminal")))
        finally:
            if joined is not None:
                joined()
        t2 = time.perf_counter()
        if master is not None:
            nonblock(master)
            c.master = master
            self.m._watch(master, c, "stdout")
        if cg_path and c.cgroup is None:
            c.cgroup = cgroups.open_cgroup(cg_path)  # the runtime's: for stats and OOM kills
        if c.cgroup is not None:
            self.count_ooms()
        c.start_time = linux.proc_start_time(c.pid)
        c.write_state("created")
        return t0, t1, t2

    def start(self):
        self.oci.start()  # a failure leaves it created (OciError -> the request's error)

    def kill(self, sig, all_processes):
        if all_processes and self.oci.own_cgroups:  # our cgroup: we signal its processes
            self.kill_cgroup(sig)
        try:
            self.oci.kill(sig, all_processes and not self.oci.own_cgroups)
        except oci.OciError:
            if linux.is_alive(self.c.pid, self.c.start_time):
                raise

    def exec(self, process, stdio, console, init=None):
        """The runtime makes the pty of a terminal in the container and hands back its master."""
        return self.oci.exec(process, stdio, process["terminal"])

    def update(self, resources):
        if self.oci.own_cgroups:
            return super().update(resources)
        self.oci.update(resources)
        return []

    def release(self):
        """The runtime's state and cgroup, then the rootfs mount."""
        for problem in self.oci.delete():
            self.m.log.warning("container.runtime_delete_failed", container_id=self.c.id, error=problem)
