"""Multi-process training (torchrun's environment, gloo, 2 CPU processes): a run ends with the
same weights and structure-search scores (fp64) as one process on the concatenated batch
for a model without BN, a killed 2-process run resumes bit-identically, process 0 alone
writes, and ``--nproc`` is checked and launches torchrun."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from fxsparse.cli import main as cli_main
from fxsparse.training.data import SeededSampler
from fxsparse.training.trainer import TrainConfig, Trainer
from test_ddp import NoBN  # a model without BN: data parallel equals one process exactly


class Pairs(Dataset):
    """(image, label) by the (index, sample seed) pairs the SeededSampler yields."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, item):
        i = item[0] if isinstance(item, tuple) else item
        return self.x[i], self.y[i]


def loaders(batch=8):
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(48, 3, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 5, (48,), generator=g)
    train = DataLoader(Pairs(x[:32], y[:32]), batch_size=batch, sampler=SeededSampler(32, seed=0), drop_last=True)
    test = DataLoader(Pairs(x[32:], y[32:]), batch_size=16)
    return train, test, {"num_classes": 5, "in_chans": 3}


def config(out, **kw):
    # VR-PGE (scores and a search to agree on) unless ``kw`` names another method: the default is l1_filter
    base = dict(model="test:NoBN", data="synthetic", batch_size=8, epochs=2, finetune_epochs=1, compile=False, lr=0.05,
                keep=0.5, device="cpu", method="vrpge", out=str(out))
    base.update(kw)
    return TrainConfig(**base)


def trainer(out, resume=False, callbacks=(), **kw):
    torch.manual_seed(0)
    return Trainer(config(out, **kw), model=NoBN().double(), loaders=loaders(), resume=resume, callbacks=callbacks,
                   log=None, progress=False)


class Stop(Exception):
    pass


def _worker(rank, world, port, out, stop_at, resume, kw):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)

    def stop(tr, event, **info):
        if event == "step" and tr.state.step == stop_at:
            raise Stop

    try:
        trainer(out, resume=resume, callbacks=[stop] if stop_at else [], **kw).run()
    except Stop:
        pass


def _spawn(out, stop_at=0, resume=False, **kw):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(out), stop_at, resume, kw), nprocs=2, join=True)


def _result(out):
    model = load_file(os.path.join(out, "model.safetensors"))  # the network given as an object: its weights
    last = torch.load(os.path.join(out, "last.pt"), weights_only=False)
    method = {k: v for k, v in _tensors(last["method"])}
    return model, method, last["history"]


def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


@pytest.mark.slow
@pytest.mark.long
def test_two_processes_equal_one_on_the_whole_batch_and_resume_bit_identically(tmp_path):
    trainer(tmp_path / "one").run()
    _spawn(tmp_path / "two")
    one_model, one_method, one_hist = _result(tmp_path / "one")
    two_model, two_method, two_hist = _result(tmp_path / "two")
    assert one_model.keys() == two_model.keys() and one_method.keys() == two_method.keys()
    assert any("score" in k for k in one_method), one_method.keys()
    for k in one_model:
        assert torch.allclose(one_model[k], two_model[k], rtol=1e-10, atol=1e-12), k
    for k in one_method:
        if one_method[k].is_floating_point():
            assert torch.allclose(one_method[k], two_method[k], rtol=1e-10, atol=1e-12), k
        else:
            assert torch.equal(one_method[k], two_method[k]), k
    for a, b in zip(one_hist, two_hist):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-10) and a["test_acc_pct"] == b["test_acc_pct"]
        assert a["train_tflop"] == pytest.approx(b["train_tflop"], rel=1e-12)
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))

    # killed mid second epoch (after the first epoch's checkpoint), then resumed: bit-identical
    _spawn(tmp_path / "cut", stop_at=6)
    assert not (tmp_path / "cut" / "model.json").exists()
    _spawn(tmp_path / "cut", resume=True)
    cut_model, cut_method, cut_hist = _result(tmp_path / "cut")
    for k in two_model:
        assert torch.equal(cut_model[k], two_model[k]), k
    for k in two_method:
        assert torch.equal(cut_method[k], two_method[k]), k
    assert [r["loss"] for r in cut_hist] == [r["loss"] for r in two_hist]


def test_nproc_must_be_positive(tmp_path, capsys):
    out = tmp_path / "o"
    assert cli_main(["train", "--nproc", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--nproc must be at least 1" in err
    assert not out.exists()


def test_nproc_launches_torchrun(monkeypatch):
    import subprocess
    import sys

    calls = []

    class Popen:  # torchrun, which runs nothing; its stderr passes through the launcher
        def __init__(self, cmd, env, stderr):
            calls.append(cmd)
            read, write = os.pipe()
            os.close(write)
            self.stderr = os.fdopen(read, "rb")

        def wait(self):
            return 0

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(subprocess, "Popen", Popen)
    assert cli_main(["train", "--nproc", "2", "--model", "zoo:lenet5", "--nproc=2", "--out", "x"]) == 0
    assert calls == [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                      "fxsparse", "train", "--model", "zoo:lenet5", "--out", "x"]]


def test_the_global_batch_must_split_over_the_processes(monkeypatch, tmp_path):
    from fxsparse.training.distributed import ShardBatches

    with pytest.raises(ValueError, match="--batch-size 9 is the global batch"):
        ShardBatches(SeededSampler(32), 9, 0, 2)
    halves = [list(ShardBatches(SeededSampler(32, seed=1), 8, r, 2)) for r in range(2)]
    whole = list(SeededSampler(32, seed=1))
    assert [a + b for a, b in zip(*halves)] == [whole[i:i + 8] for i in range(0, 32, 8)]


@pytest.mark.slow
@pytest.mark.xdist_group("nproc2_run")  # one worker: the two-process run (tests/conftest.py) runs once
def test_nproc_2_runs_torchrun_end_to_end(nproc2_run, tmp_path):
    """`fxsparse train --nproc 2` launches torchrun (python -m fxsparse in each process):
    the run finishes, process 0 writes the files, and the model matches one process."""
    two, out, args = nproc2_run
    assert two.returncode == 0, two.stderr[-3000:]
    assert {"model.safetensors", "model.json", "summary.json", "history.json", "history.csv", "steps.csv",
            "last.pt"} == \
        set(os.listdir(out))
    assert cli_main(args + ["--no-progress", "--threads", "1", "--out", str(tmp_path / "one")]) == 0
    a = load_file(tmp_path / "one" / "model.safetensors")
    b = load_file(out / "model.safetensors")
    for k in a:  # float32 and a different summation order: close, not equal
        assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5), k
