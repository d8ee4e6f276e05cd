"""Shared test setup.

Triton kernels run under the interpreter on machines without a CUDA device; the variable must be set
before triton is first imported, so it is set here, at collection time.
"""

from __future__ import annotations

import glob
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see pagcp/__init__.py
# The suite's models and images are tiny: one thread runs them up to 3.6x faster than two on a 2-core machine
# (thread wake-ups cost more than the work they share). Subprocesses the tests start inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "TRITON_INTERPRET" not in os.environ and not glob.glob("/dev/nvidia[0-9]*"):
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine, tiny convs are many times faster than with two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
