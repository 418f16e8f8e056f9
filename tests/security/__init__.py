"""Security context: users, capabilities, mounts, sysctls, seccomp... asserted inside real containers."""
