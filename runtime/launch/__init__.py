"""The launcher: an OCI spec made into a container process (runtime/launch/*.py; docs/runtime.md, "Launch sequence").

    plan = launch.plan_from_spec(spec, bundle, stdio=(0, 1, 2))   # plan.py: everything decided in the parent
    proc = launch.Process(plan)                                   # process.py: the child, cloned or pycri-init
    proc.setup(); proc.start()

The parts: plan.py (spec -> Plan), process.py (the Python child and the parent's side of either child),
fastinit.py with initc/ (the C child and its encoding of a plan), initproc.py (the C child's processes),
prepare.py (a plan made by a client, ahead of the monitor), rootfs.py, userns.py, hooks.py, seccomp.py, caps.py.
"""
from runtime.launch.plan import (DEFAULT_PATH, LaunchError, Plan, plan_container, plan_for_exec, plan_from_spec,
                                 spec_json)
from runtime.launch.process import Process

__all__ = ["DEFAULT_PATH", "LaunchError", "Plan", "Process", "plan_container", "plan_for_exec", "plan_from_spec",
           "spec_json"]
