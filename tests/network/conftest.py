import pytest


@pytest.fixture(autouse=True)
def _leak_check(no_leaks):
    """Every network test checks it left no netns, veth, bridge or nat chain behind."""
