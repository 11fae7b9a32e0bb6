import gc
import os
import sys

import pytest
import torch

# The tests live in folders that follow the library's layers (core, analysis, rules, rewrite, step,
# methods, training, cli, zoo, thirdparty); the helpers they share stay here at the root
# (harness, sparse_checks, rule_models, lanes, idx_files, the thirdparty package).
sys.path.insert(0, os.path.dirname(__file__))
# tests/test_trainer.py still imports make_idx_dir from test_data (now tests/training/)
sys.path.insert(1, os.path.join(os.path.dirname(__file__), "training"))

# pytest -n (pytest-xdist): the workers share the cores instead of each taking all of them
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    torch.set_num_threads(max(1, torch.get_num_threads() // _workers))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tiny MNIST-format data set (IDX files, gzip): 192 training and 48 test images."""
    from idx_files import make_idx_dir

    root = tmp_path_factory.mktemp("idx")
    make_idx_dir(str(root), n_train=192, n_test=48, gz=True, seed=3)
    return str(root)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models run faster on one thread than on two busy ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", autouse=True)
def _fresh_compile_state():
    """Each test file starts with torch.compile's caches empty, and what earlier files left
    alive is frozen out of the garbage collector's full passes: by the last files a million
    live objects made every full collection ~1 s, and tracing-heavy tests (torch.compile,
    torch.export) ran 2-4x slower than alone."""
    yield
    torch._dynamo.reset()
    gc.collect()
    gc.freeze()
