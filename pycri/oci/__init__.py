"""The OCI runtime spec a pod or container gets: built from the CRI configs and the image config, with its users,
seccomp and LSM profiles, CDI devices, and the checks of the CRI strings that end up in files and paths."""
