import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # the test helpers (harness, sparse_checks, thirdparty)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models run faster on one thread than on two busy ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
