"""The node suite: what only a cgroup v2 node with systemd as PID 1 shows (the configuration most users' nodes
have). It runs in the guest that hack/node.py boots (`make node-test`); on a host with cgroup v1 there is nothing
of it to collect."""

from runtime.cgroups import detect_version

if detect_version() != 2:
    collect_ignore_glob = ["test_*.py"]
