"""Pod sandboxes: their lifecycle (manager.py), the files their containers share (podfiles.py), and the daemon's side
of the per-pod monitors that hold them (monitors.py)."""
