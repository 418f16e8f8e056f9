"""pycri: a Kubernetes CRI (runtime.v1) container runtime in Python."""

__version__ = "0.1.0"
RUNTIME_NAME = "pycri"
CRI_API_VERSION = "v1"
