"""Shared test setup: one thread per process (the machines are small and shared)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def pytest_addoption(parser):
    parser.addoption("--run-bench", action="store_true", help="also run the tests marked bench (comparison runs)")


def pytest_collection_modifyitems(config, items):
    import pytest

    if config.getoption("--run-bench"):
        return
    skip = pytest.mark.skip(reason="a comparison run, not in the default suite (pytest --run-bench)")
    for item in items:
        if "bench" in item.keywords:
            item.add_marker(skip)
