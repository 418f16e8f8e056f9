"""Stats: the CRI stats of containers and pods and the cAdvisor-named metrics, gathered in collect.py; the metric set
itself in cadvisor.py."""
