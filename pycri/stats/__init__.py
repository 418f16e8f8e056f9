"""Stats: the CRI stats of containers and pods, and the cAdvisor-named metric set of ListPodSandboxMetrics."""
