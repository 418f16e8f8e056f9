"""The container's init planned and encoded by the client, in the daemon's process, before the monitor gets the
request: the monitor then runs the encoded init (fastinit) without planning the spec again (docs/runtime.md,
"Fast init"). Anything the planning refuses gives None: the monitor plans that create itself and reports the error.
"""
from __future__ import annotations

import os

from runtime import cgroups
from runtime.launch import fastinit
from runtime.launch.plan import plan_container, plan_for_exec, spec_json


def plan_init(cid: str, bundle: str, spec: dict | None, overlay: dict | None):
    """The launch.Plan of a create by the built-in runtime, made here for fastinit.prepare so that the monitor
    need not run that code (runtime/launch/fastinit.py says why); None where fast init does not apply, and for a
    spec the planning refuses: the monitor then plans it itself and reports the error. A spec not given is
    read from the bundle here (the monitor reads it too: sending it costs more)."""
    if not fastinit.enabled():
        return None
    try:
        if spec is None:
            spec = spec_json(os.path.join(bundle, "config.json"))
        if not isinstance(spec, dict) or (spec.get("process") or {}).get("terminal"):
            return None
        cg_path = (spec.get("linux") or {}).get("cgroupsPath")
        plan = plan_container(spec, bundle, cid, overlay=overlay, stdio=(0, 1, 2), cgroup=bool(cg_path),
                              cgroup_tasks=cgroups.open_cgroup(cg_path).self_attach_paths() if cg_path else None)
        return plan
    except Exception:  # noqa: BLE001 - any refusal is the monitor's to report, with its usual message
        return None


def prepare_exec(pid: int, bundle: str, process: dict) -> dict | None:
    """The init of an exec into the container whose process is pid and whose bundle is bundle, planned as the
    monitor would (runtime/monitor/builtin.py: BuiltinRunner.exec), here rather than there
    (runtime/launch/fastinit.py says why); None where fast init does not apply (a terminal) or the planning
    refuses (the monitor then plans and reports)."""
    if not fastinit.enabled() or not isinstance(process, dict) or process.get("terminal") or not pid:
        return None
    try:
        spec = spec_json(os.path.join(bundle, "config.json"))
        merged = {**(spec.get("process") or {}), **process, "terminal": False}
        plan = plan_for_exec(pid, merged, spec, stdio=(0, 1, 2))
        cg_path = (spec.get("linux") or {}).get("cgroupsPath")
        if cg_path:
            plan.cgroup_tasks = cgroups.open_cgroup(cg_path).self_attach_paths()
        if plan.cgroup_tasks or not cg_path:
            plan.go_stage = None
        plan.auto_start = True
        return fastinit.prepare(plan)
    except Exception:  # noqa: BLE001 - the monitor's to report, with its usual message
        return None


def init_lines(cid: str, bundle: str, spec: dict | None, overlay: dict | None):
    """The lines that follow a create sent with "init": "follows" (the monitor's conns.InitLines): the init planned
    and its first part encoded here, while the monitor makes the container's pipes and state, then its second
    part. {"init": null} where fast init does not apply: the monitor then plans it."""
    plan = plan_init(cid, bundle, spec, overlay)
    try:
        init = fastinit.prepare(plan, tail=False) if plan is not None else None
    except ValueError:
        init = None
    yield {"init": init}
    if init is not None:
        yield fastinit.prepare_tail(plan)


def prepare_init(cid: str, bundle: str, spec: dict | None, overlay: dict | None) -> dict | None:
    """The whole init of a create, in one dict (fastinit.prepare), or None (see plan_init)."""
    plan = plan_init(cid, bundle, spec, overlay)
    try:
        return fastinit.prepare(plan) if plan is not None else None
    except ValueError:
        return None
