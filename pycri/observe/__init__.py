"""What the daemon shows of itself beyond the CRI: Prometheus metrics, the read-only HTTP pages that serve them and
pull progress, and the view of pull progress that `pycri images pulls` prints."""
