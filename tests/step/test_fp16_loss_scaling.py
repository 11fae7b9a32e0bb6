"""fp16 loss scaling in the compact sparse step (``make_train_step(..., scaler=...)``), on
the CPU in fp32: with a scaler the steps equal those without (SGD with momentum, Adam);
an overflow updates nothing (weights, optimizer state, running statistics bit-identical),
backs the scale off and is counted; the scale grows after its interval of good steps. The
trainer no longer refuses ``--precision fp16`` for VR-PGE's search: fp16 needs CUDA, so on
a CPU the wiring is tested past the device check, which is patched out here."""
import copy

import pytest
import torch
import torch.nn.functional as F

import fxsparse
import fxsparse.training.device as device_module
from fxsparse.training.trainer import TrainConfig, Trainer
from sparse_checks import ConvBNNet
from idx_files import make_idx_dir


def _setup(opt, seed=0):
    torch.manual_seed(seed)
    model = ConvBNNet()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    sp = fxsparse.compile(model, x, keep=0.5, compile=False, capacity="auto")
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, sp, optimizer, x, y


def _run(opt, scaler, steps=4):
    model, sp, optimizer, x, y = _setup(opt)
    step = sp.make_train_step(F.cross_entropy, optimizer, scaler=scaler)
    for _ in range(steps):
        sp.sample_masks(0.5)  # the same masks in both runs: the SparseModel's own seeded generator
        step(x, y)
    return model, step


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_scaled_steps_equal_unscaled_ones(opt):
    torch.manual_seed(5)
    plain, _ = _run(opt, None)
    torch.manual_seed(5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=3)
    scaled, step = _run(opt, scaler)
    for (name, a), b in zip(plain.state_dict().items(), scaled.state_dict().values()):
        err = float((a.double() - b.double()).abs().max()) / max(1e-12, float(a.double().abs().max()))
        assert err <= 1e-6, (name, err)
    assert step.overflows == 0 and step.skipped == 0
    assert scaler.get_scale() == 2.0 ** 11  # grown once, after its growth interval of 3 good steps
    assert step.loss_scaling.state_dict()["good_steps"] == 1


class Overflow(torch.autograd.Function):
    """Identity whose backward overflows (an inf gradient into every weight) while ``on``."""
    on = False

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf") if Overflow.on else g


def overflowing_loss(out, target):
    return F.cross_entropy(Overflow.apply(out), target)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_an_overflow_updates_nothing_and_backs_the_scale_off(opt):
    model, sp, optimizer, x, y = _setup(opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    step = sp.make_train_step(overflowing_loss, optimizer, scaler=scaler)
    sp.sample_masks(0.5)
    step(x, y)  # an ordinary step first: the optimizer has state to keep
    before = copy.deepcopy(model.state_dict())
    opt_before = copy.deepcopy(optimizer.state_dict())
    sp.sample_masks(0.5)
    Overflow.on = True
    try:
        loss = step(x, y)
    finally:
        Overflow.on = False
    assert torch.isfinite(loss)  # the loss itself is fine: an overflow is not a skipped loss
    assert step.overflows == 1 and step.skipped == 0
    assert scaler.get_scale() == 2.0 ** 9
    for name, t in model.state_dict().items():  # weights and BN running statistics
        assert torch.equal(t, before[name]), name
    after = optimizer.state_dict()["state"]
    for k, st in opt_before["state"].items():
        for key, v in st.items():
            assert torch.equal(torch.as_tensor(after[k][key]), torch.as_tensor(v)), (k, key)
    sp.sample_masks(0.5)
    step(x, y)  # at the backed-off scale the step updates again
    assert step.overflows == 1
    assert any(not torch.equal(t, before[n]) for n, t in model.state_dict().items())


def test_an_injected_inf_gradient_is_an_overflow():
    model, sp, optimizer, x, y = _setup("sgd")
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    step = sp.make_train_step(F.cross_entropy, optimizer, scaler=scaler)
    before = copy.deepcopy(model.state_dict())
    handle = model.fc.bias.register_hook(lambda g: torch.full_like(g, float("inf")))  # fc is not gathered
    sp.sample_masks(0.5)
    step(x, y)
    handle.remove()
    assert step.overflows == 1 and scaler.get_scale() == 2.0
    for name, t in model.state_dict().items():
        assert torch.equal(t, before[name]), name


# ----- the trainer -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    make_idx_dir(str(root), n_train=96, n_test=32, gz=True, seed=3)
    return str(root)


@pytest.fixture
def fp16_on_cpu(monkeypatch):
    """fp16 needs CUDA (a one-line error on a CPU, tested in test_train_setups); patched out
    here to reach the trainer's check of the method's phases. TrainConfig.validate imports it
    from the device module when it runs, so patching it there reaches every caller."""
    monkeypatch.setattr(device_module, "check_precision", lambda precision, device: None)


def _config(data_dir, out, **kw):
    return TrainConfig(**dict(model="zoo:lenet5", data="mnist", data_root=data_dir, batch_size=32, epochs=1,
                              finetune_epochs=1, compile=False, out=str(out), device="cpu", precision="fp16",
                              method="vrpge", **kw))


def test_the_trainer_gives_vrpge_search_the_scaler(data_dir, tmp_path, fp16_on_cpu):
    tr = Trainer(_config(data_dir, tmp_path / "o"), log=None, progress=False)
    assert isinstance(tr.precision.scaler, torch.amp.GradScaler)
    assert tr.run_context.scaler is tr.precision.scaler
    tr.method.build_phase("search", tr.run_context, 0, 3)
    assert tr.method.step_fn.loss_scaling.scaler is tr.precision.scaler
    step = tr.method.step_fn
    step.loss_scaling.good_steps, step.loss_scaling.overflows = 7, 2
    state = tr.method.state_dict()
    assert state["loss_scaling"] == {"good_steps": 7, "overflows": 2}
    tr.method.load_state_dict(state)  # a resume rebuilds the search with its counts
    tr.method.build_phase("search", tr.run_context, 0, 3)
    assert tr.method.step_fn is not step and tr.method.step_fn.loss_scaling.good_steps == 7
    assert tr.method.step_fn.overflows == 2


def test_a_short_fp16_vrpge_run_trains_through_the_scaled_search(data_dir, tmp_path, fp16_on_cpu):
    """CPU autocast to float16 with the CPU GradScaler: the search and the fine-tune run."""
    tr = Trainer(_config(data_dir, tmp_path / "o"), log=None, progress=False)
    tr.run()
    assert tr.method.step_fn.loss_scaling.scaler is tr.precision.scaler
    assert tr.method.step_fn.overflows == 0 and tr.method.step_fn.skipped == 0
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    assert all(row["skipped"] == 0 for row in tr.history)


def test_the_trainer_still_refuses_fp16_for_an_unscaled_own_step(data_dir, tmp_path, fp16_on_cpu):
    with pytest.raises(ValueError, match="--precision fp16: method 'vrpge' trains in a step of its own"):
        Trainer(_config(data_dir, tmp_path / "o", method_options={"weight_average": True}), log=None, progress=False)


def test_fp16_on_a_cpu_is_still_refused(data_dir, tmp_path):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        _config(data_dir, tmp_path / "o").validate()
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Trainer(_config(data_dir, tmp_path / "o"), log=None, progress=False)
