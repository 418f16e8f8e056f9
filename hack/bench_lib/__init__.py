"""Modules of hack/bench.py (the CRI benchmark of pycri against containerd 1.6 + runc), hack/bench_steady.py (a
kubelet's steady-state load) and hack/bench_restart.py.

- common:     the shared environment (temp dirs, CNI conflist, registry), process/mount/cgroup clean-up helpers
- containerd: start/stop a private containerd with its own config, root, state and socket
- pycri:      start/stop a private pycri daemon
- workload:   the CRI client, the timed workload and the statistics
- memory:     resident/private memory of daemons and of the processes that belong to a pod
- cpu:        CPU seconds of a runtime's processes over a window, reaped children included
- steady:     the ramp, the kubelet-like load and the teardown of hack/bench_steady.py
- report:     the markdown tables and the JSON of raw samples
"""
