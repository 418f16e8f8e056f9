"""Containers: their lifecycle in a pod (manager.py) and the host mounts their volumes' propagation needs
(hostmounts.py)."""
