import gc
import os
import sys

import pytest
import torch

# The tests live in folders that follow the library's layers (core, analysis, rules, rewrite, step,
# methods, training, cli, zoo, thirdparty); the helpers they share stay here at the root
# (harness, sparse_checks, rule_models, lanes, idx_files, captures, the thirdparty package).
sys.path.insert(0, os.path.dirname(__file__))

# pytest -n (pytest-xdist): the workers share the cores instead of each taking all of them
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    torch.set_num_threads(max(1, torch.get_num_threads() // _workers))


# pytest -n: the tests that read one model's shared capture (tests/captures.py, marked
# ``reads_capture``) go to one worker, so each model is captured once per run rather than once
# per worker that draws one of its tests (pytest-xdist's loadgroup scheduling, chosen here so
# that the README's test command stays `pytest -n auto`)
def pytest_configure(config):
    config.addinivalue_line("markers", "reads_capture(set): the test reads captured('SET:<its name param>')")
    config.addinivalue_line("markers", "long: takes tens of seconds (an inductor compile of a whole step, processes "
                                       "it spawns); started first under pytest -n (long_tests_first)")
    if getattr(config.option, "dist", "no") == "load":  # the controller: -n without --dist
        config.option.dist = "loadgroup"
    if getattr(config, "workerinput", {}).get("fxsparse_loadgroup"):  # a worker: group ids in node ids
        config.option.loadgroup = True


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):  # pytest-xdist, on the controller: what each worker is told
    node.workerinput["fxsparse_loadgroup"] = node.config.option.dist == "loadgroup"


def long_tests_first(items):
    """pytest -n hands out tests in collection order as workers free up, so a long test drawn
    near the end leaves the other worker idle while it runs (ResNet-20's compiled step, last
    in collection order, kept one of two workers busy alone for ~50 s). The files holding a
    ``long`` test go first (in their order), and those tests first in their file; every file's
    tests stay together, for its module-scoped fixtures."""
    files: dict = {}
    for item in items:
        files.setdefault(item.path, []).append(item)

    def is_long(item):
        return item.get_closest_marker("long") is not None

    ordered = sorted(files.values(), key=lambda its: not any(map(is_long, its)))  # stable
    items[:] = [item for its in ordered for item in sorted(its, key=lambda i: not is_long(i))]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's hook reads the groups
def pytest_collection_modifyitems(items):
    long_tests_first(items)
    for item in items:
        marker = item.get_closest_marker("reads_capture")
        name = getattr(getattr(item, "callspec", None), "params", {}).get("name")
        if marker is not None and name is not None:
            prefix = marker.args[0]
            item.add_marker(pytest.mark.xdist_group(f"{prefix}:{name}" if prefix else name))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A tiny MNIST-format data set (IDX files, gzip): 192 training and 48 test images."""
    from idx_files import make_idx_dir

    root = tmp_path_factory.mktemp("idx")
    make_idx_dir(str(root), n_train=192, n_test=48, gz=True, seed=3)
    return str(root)


@pytest.fixture(scope="session")
def idx_small(tmp_path_factory):
    """A smaller MNIST-format data set (IDX files, gzip): 64 training and 16 test images."""
    from idx_files import make_idx_dir

    root = tmp_path_factory.mktemp("idx_small")
    make_idx_dir(str(root), n_train=64, n_test=16, gz=True, seed=3)
    return str(root)


NPROC2_ARGS = ["--model", "zoo:lenet5", "--data", "mnist", "--batch-size", "16", "--epochs", "1", "--finetune-epochs",
               "1", "--method", "vrpge", "--no-compile", "--device", "cpu"]


@pytest.fixture(scope="session")
def nproc2_run(idx_small, tmp_path_factory):
    """``fxsparse train --nproc 2`` (torchrun, two processes) as a user runs it, in a fresh
    interpreter with OMP_NUM_THREADS unset and the progress bar on: (the finished process,
    its --out folder, the arguments of the run but --nproc and --out). Shared by the test of
    what it prints (tests/cli/test_first_hour.py) and of what it trains (tests/training/test_distributed.py)."""
    import subprocess

    args = ["train", *NPROC2_ARGS, "--data-root", idx_small]
    out = tmp_path_factory.mktemp("nproc2") / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OMP_NUM_THREADS")}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.run([sys.executable, "-m", "fxsparse", *args, "--nproc", "2", "--out", str(out)],
                          cwd=str(out.parent), env=env, capture_output=True, text=True, timeout=600)
    return proc, out, args


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


@pytest.fixture
def aot_eager(monkeypatch):
    """The compiled step through torch.compile's ``aot_eager`` backend instead of inductor, its
    graphs still counted (``SparseModel.compilations``): for tests whose point is what dynamo
    and AOT autograd do (graph counts, recompiles, symbolic counts, the compiled step's
    values), not inductor's code. The inductor compiles stay in the tests that check them
    (tests/step/test_sparse_step.py, tests/step/test_dynamic_capacity.py, tests/zoo/test_zoo_sparse_step.py)."""
    from torch._dynamo.backends.debugging import aot_eager as backend

    from fxsparse.step.compiler import StepCompiler

    def counted(self, gm, example_inputs):
        self.compilations += 1
        return backend(gm, example_inputs)

    monkeypatch.setattr(StepCompiler, "backend", counted)
