"""The built-in launcher as the monitor's runner: containers cloned by runtime/launch in the monitor itself, fast
init (pycri-init, spares) when the plan allows, the spec's OCI hooks run here."""
from __future__ import annotations

import os
import time

from runtime import cgroups, launch
from runtime.host import linux
from runtime.launch import fastinit, hooks
from runtime.monitor.runner import Runner, kill_quietly


class BuiltinRunner(Runner):
    def __init__(self, m, c):
        super().__init__(m, c)
        self.proc: launch.Process | None = None
        self.ready_pending = False  # created with "ready": "later": start waits for the end of the set-up

    @property
    def warnings(self) -> list[str]:
        return self.proc.warnings if self.proc else []

    def create(self, req, log_path, max_line, stdio, console):
        """Plan and clone first; the cgroup is made while the child sets up its namespaces and mounts (the
        other CPU), and the child joins it itself just before pivot_root (go_stage "late"; see
        cgroups.Cgroup.self_attach_paths). Then, still in parallel, the parent's share: state dir, log file,
        start time and state.json (written before the answer, as always)."""
        c, m = self.c, self.m
        spec = c.spec
        lin = spec.get("linux") or {}
        cg_path = lin.get("cgroupsPath")
        cg = cgroups.open_cgroup(cg_path) if cg_path else None
        t0 = time.perf_counter()
        parts = None
        init = req.get("init")
        if init == "follows":  # the client planned it while we made the pipes and state: its line is here
            init = c.init_lines.head()
        if init is not None and console is None and fastinit.prepared_usable(init):
            # planned and encoded by the client, which found fast init enabled (see runtime/launch/fastinit.py)
            plan, parts = fastinit.prepared_plan(init, spec, stdio)
            plan.hook_state = {"id": c.id, "bundle": c.bundle}
            if parts[1] is None:
                parts = (parts[0], c.init_lines.tail)
        else:
            plan = launch.plan_container(spec, c.bundle, c.id, overlay=req.get("overlay"), stdio=stdio,
                                         console_fd=console, cgroup=cg is not None,
                                         cgroup_tasks=cg.self_attach_paths() if cg is not None else None)
        t1 = time.perf_counter()
        spare = m.spares.take()
        try:
            self.proc = launch.Process(plan, spare, parts)
        finally:
            if spare is not None and not (self.proc and self.proc.used_spare):
                spare.close()
        t2 = time.perf_counter()
        proc = self.proc
        c.pid = proc.pid
        if cg is not None:
            self.take_cgroup(cg, cg_path)
            if not plan.cgroup_tasks:
                cg.attach(c.pid)
            # after the attach: under the systemd driver it is what makes the scope, and so the cgroup to watch
            self.count_ooms()
        proc.go()
        # in parallel with the child's set-up
        os.mkdir(c.dir, 0o700)
        if log_path:
            c.open_log(log_path, max_line)
        # else the pid is the grandchild's (a pid namespace joined, or made after a user namespace), known once ready
        pid_known = plan.join_pid is None and not plan.pid_fork
        if pid_known:
            c.start_time = linux.proc_start_time(c.pid)
            c.write_state("created")
        if proc.fast:  # op_start makes a spare like it, once its answer is out
            self.spare_hint = bool(plan.clone_flags & linux.CLONE_NEWPID) and plan.join_pid is None
        if plan.runtime_hooks:  # the child stops after its mounts, before pivot_root, for these (as runc)
            proc.wait_hooks_point()
            c.pid = proc.pid
            self.hooks(("prestart", "createRuntime"), "creating", fatal=True)
            proc.resume()
        if req.get("ready") == "later" and pid_known and not plan.runtime_hooks:
            self.ready_pending = True  # answered now; the set-up goes on, and start waits for its end
        else:
            proc.wait_ready()
        if not pid_known:
            c.pid = proc.pid
            c.start_time = linux.proc_start_time(c.pid)
            c.write_state("created")
        return t0, t1, t2

    def start(self):
        if self.ready_pending:
            self._await_ready()
        self.proc.begin_start()

    def _await_ready(self) -> None:
        """The end of the set-up of a container created with "ready": "later". A failed set-up fails the start
        with its error, and the container ends as a failed exec does (exit code 128, as containerd's
        StartError)."""
        c, m = self.c, self.m
        self.ready_pending = False
        known = len(self.proc.warnings)
        try:
            self.proc.wait_ready()
        except launch.LaunchError:
            m._failed_start(c, 128)
            raise
        for w in self.proc.warnings[known:]:
            m._later(m.log.warning, "container.warning", container_id=c.id, warning=w)

    def started(self):
        self.proc.wait_started()

    def kill(self, sig, all_processes):
        if all_processes:
            self.kill_cgroup(sig)
        kill_quietly((self.c.pid,), sig)

    def exec(self, process, stdio, console, init=None):
        """Clone, join the container's namespaces and cgroup, exec process; returns its pid. init: the exec
        planned by the client (launch/prepare.py), used when it was made for this container's process."""
        c = self.c
        plan = parts = None
        if init is not None and console is None and fastinit.prepared_usable(init):
            plan, parts = fastinit.prepared_plan(init, dict(c.spec, process=process), stdio)
            ns = f"/proc/{c.pid}/ns/"
            if not plan.auto_start or plan.rootfs is not None or not all(
                    p.startswith(ns) for p in [path for _, path in plan.join] + [plan.join_pid or ns]):
                plan = parts = None  # made for another process (or not an exec): planned here instead
        if plan is None:
            plan = launch.plan_for_exec(c.pid, process, c.spec, stdio=stdio, console_fd=console)
            if c.cgroup:
                plan.cgroup_tasks = c.cgroup.self_attach_paths()  # joined by the child before any setns
            if plan.cgroup_tasks or not c.cgroup:
                plan.go_stage = None  # nothing for the parent to do first: the child need not wait
            plan.auto_start = True  # set up and exec in one go: no ready/start round trip
        proc = launch.Process(plan, None, parts)
        try:
            if c.cgroup and not plan.cgroup_tasks:
                c.cgroup.attach(proc.pid)
            proc.run()
        except launch.LaunchError:
            raise
        except BaseException:
            proc.abort()
            raise
        return proc.pid, None

    def hooks(self, kinds, status, *, fatal):
        """Run the spec's OCI hooks of these kinds (runtime/launch/hooks.py); a fatal failure fails the request."""
        c = self.c
        for kind in kinds:
            if not hooks.of(c.spec, kind):
                continue
            try:
                hooks.run(kind, c.spec, hooks.state(c.spec, c.id, c.bundle, status, c.pid))
            except hooks.HookError as exc:
                self.m.log.warning("container.hook_failed", container_id=c.id, hook=kind, error=str(exc))
                if fatal:
                    raise launch.LaunchError(str(exc)) from None

    def exited(self, exit_code, sig):
        if self.ready_pending:  # gone during a set-up nobody waited for yet: keep its error for op_start
            self.ready_pending = False
            self.c.setup_error = self.proc.setup_outcome()
            if self.c.setup_error is not None and not sig:
                exit_code = 128  # as op_start records a failed set-up (_await_ready)
        return exit_code

    def abort(self):
        if self.proc is None:
            return False
        self.proc.abort()
        return True

    def release(self):
        if self.proc and self.c.status == "creating":
            self.proc.abort()  # a failed create: the child may still wait for its go
        elif self.proc:
            self.proc.close()


