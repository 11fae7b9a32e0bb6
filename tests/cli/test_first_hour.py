"""A user's first hour (issue #29): ``timm:`` models after the README's install (timm without
torchvision), install hints that never let pip replace torch, Ctrl-C during ``fxsparse train``
(one line: the checkpoint and the command that continues), ``fxsparse analyze``'s default
input, a fast ``--version`` / ``--help``, every level in ``--list-methods``, and torchrun's OMP
banner under ``--nproc``. The command-line checks run ``python -m fxsparse`` in fresh
interpreters: no stand-in or stub of the test suite is loaded there."""
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import torch.nn as nn

import fxsparse
from fxsparse import cli
from fxsparse.cli import main as cli_main
from fxsparse.zoo import _timm_import
from idx_files import make_idx_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env(**extra):
    """The environment of a fresh ``python``: one thread, no PYTHONPATH (nothing of tests/)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _fxsparse(*args):
    return [sys.executable, "-m", "fxsparse", *args]


def _has_timm():
    try:
        importlib.metadata.version("timm")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


needs_timm = pytest.mark.skipif(not _has_timm(), reason="timm is not installed (pip install --no-deps timm)")


# ----- timm without torchvision --------------------------------------------------------------

@needs_timm
def test_analyze_a_timm_model_in_a_fresh_interpreter(tmp_path):
    """What a user runs right after the README's install. ResNet-18 (4 stages of 2 basic blocks,
    widths 64/128/256/512, 10 classes): one group per stage's residual stream (64+128+256+512)
    and one inside each of the 8 blocks (2 x (64+128+256+512)) are prunable, 12 groups and
    2880 channels; the logits' group (10) is not."""
    r = subprocess.run(_fxsparse("analyze", "timm:resnet18", "--input", "1x3x32x32"), cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("13 channel groups, 12 prunable (2880 prunable channels)"), r.stdout[:300]
    assert "torchvision" not in r.stderr


_STAND_IN_PROBE = r"""
import importlib.util, json, sys
import torch
from fxsparse.zoo import _timm_import
real_tv = importlib.util.find_spec("torchvision") is not None
timm = _timm_import.import_timm()
import timm.layers._fx, timm.data.transforms, timm.utils.model
out = {"real_torchvision": real_tv,
       "torchvision_modules_left": sorted(n for n in sys.modules if n.split(".")[0] == "torchvision"),
       "torchvision_findable": importlib.util.find_spec("torchvision") is not None,
       "fx_feature_extraction": timm.layers._fx.has_fx_feature_extraction,
       "interp": timm.data.transforms.str_to_interp_mode("bicubic").value}
try:
    timm.data.transforms.MaybeToTensor()
except Exception as exc:
    out["to_tensor"] = [type(exc).__name__, str(exc)]
# timm's own freeze (BN -> FrozenBatchNorm2d) against the unfrozen model in eval mode
torch.manual_seed(0)
model = timm.create_model("resnet10t", pretrained=False, num_classes=4)
for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(); m.running_var.uniform_(0.5, 2); m.weight.data.normal_(); m.bias.data.normal_()
model.eval()
x = torch.randn(2, 3, 32, 32)
ref = model(x)
frozen = timm.utils.model.freeze_batch_norm_2d(model)
kinds = {type(m).__name__ for m in frozen.modules()}
out["frozen_kinds"] = sorted(k for k in kinds if "Norm" in k)
out["frozen_err"] = float((frozen(x) - ref).abs().max() / ref.abs().max())
print(json.dumps(out))
"""


@needs_timm
def test_timm_imports_with_a_stand_in_that_leaves_nothing_behind(tmp_path):
    r = subprocess.run([sys.executable, "-c", _STAND_IN_PROBE], cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if out["real_torchvision"]:
        pytest.skip("torchvision is installed: timm imports the real one")
    assert out["torchvision_modules_left"] == [] and not out["torchvision_findable"]
    assert out["fx_feature_extraction"] is False  # timm's own no-torchvision fallback, not a stand-in
    assert out["interp"] == "bicubic"
    kind, text = out["to_tensor"]
    assert kind == "TorchvisionAbsentError"
    assert "torchvision.transforms.ToTensor" in text and "pip install --no-deps" in text
    assert out["frozen_kinds"] == ["FrozenBatchNorm2d"]  # every BatchNorm2d was frozen
    assert out["frozen_err"] < 1e-5


def test_frozen_batchnorm_equals_batchnorm_in_eval_mode():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(6, eps=1e-3)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    bn.eval()
    frozen = _timm_import.FrozenBatchNorm2d(6, eps=1e-3)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped, as in torchvision
    x = torch.randn(3, 6, 5, 5)
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-6)
    assert sorted(dict(frozen.named_buffers())) == ["bias", "running_mean", "running_var", "weight"]
    assert not list(frozen.parameters())


# ----- install hints ------------------------------------------------------------------------

# torch -> torchvision, from torchvision's compatibility table (github.com/pytorch/vision#installation)
PUBLISHED_PAIRS = [("2.0.1", "0.15"), ("2.1.2", "0.16"), ("2.3.1", "0.18"), ("2.4.0", "0.19"), ("2.5.1", "0.20"),
                   ("2.6.0", "0.21"), ("2.7.1", "0.22")]
# packages a hint may install with their dependencies: none of them requires torch
TORCH_FREE = {"huggingface_hub", "pyyaml", "safetensors", "pillow"}


def _pip_commands(text):
    return [shlex.split(seg.split("(")[0]) for seg in re.findall(r"pip install [^&;]*", text)]


def _check_safe(text):
    commands = _pip_commands(text)
    assert commands, text
    for cmd in commands:
        names = [a for a in cmd[2:] if not a.startswith("-") and not a.startswith("http")]
        if "--no-deps" not in cmd:
            assert {re.split(r"[=<>]", n)[0].lower() for n in names} <= TORCH_FREE, cmd
        assert not any("fxsparse[" in n for n in names), cmd


@pytest.mark.parametrize("torch_version, local", [(t, loc) for t, _ in PUBLISHED_PAIRS for loc in ("cpu", "cu121", "")])
def test_torchvision_hint_pins_the_release_of_the_installed_torch(monkeypatch, torch_version, local):
    monkeypatch.setattr(_timm_import.torch, "__version__", torch_version + (f"+{local}" if local else ""))
    hint = _timm_import.torchvision_install_hint()
    _check_safe(hint)
    (cmd,) = [c for c in _pip_commands(hint) if any(a.startswith("torchvision") for a in c)]
    assert "--no-deps" in cmd
    assert f"torchvision=={dict(PUBLISHED_PAIRS)[torch_version]}.*" in cmd
    if local:
        assert cmd[cmd.index("--index-url") + 1] == f"https://download.pytorch.org/whl/{local}"
    else:
        assert "--index-url" not in cmd


def test_timm_hint_keeps_torch():
    hint = _timm_import.timm_install_hint()
    _check_safe(hint)
    assert ["pip", "install", "--no-deps", "timm"] in _pip_commands(hint)
    # the packages installed with their dependencies really do not depend on torch (where installed)
    for name in TORCH_FREE:
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        assert not [r for r in requires if re.match(r"torch\b", r) and "extra ==" not in r], (name, requires)


def _requires_torch(dist, seen=None) -> list:
    """The chain of installed distributions from ``dist`` to torch or torchvision through
    requirements without an ``extra`` marker ([] where there is none, or it is not installed)."""
    seen = set() if seen is None else seen
    name = re.split(r"[\s\[=<>!~;(]", dist, maxsplit=1)[0].lower().replace("_", "-")
    if name in ("torch", "torchvision"):
        return [name]
    if name in seen:
        return []
    seen.add(name)
    try:
        requires = importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    for req in requires:
        if "extra ==" not in req and (chain := _requires_torch(req, seen)):
            return [name, *chain]
    return []


def _readme_pip_commands():
    """Every ``pip install`` of the README: in its code blocks (comments included) and in its
    inline code, each as an argv."""
    text = open(os.path.join(ROOT, "README.md")).read()
    code_blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M)
    prose = re.sub(r"^```[a-z]*\n.*?^```", "", text, flags=re.S | re.M)
    snippets = [ln for b in code_blocks for ln in b.splitlines()] + re.findall(r"`([^`]+)`", prose)
    return [shlex.split(m) for sn in snippets for m in re.findall(r"pip install [^&;#]*", sn)]


def test_readme_installs_and_extras_never_replace_torch(monkeypatch):
    """No documented install can pull another torch: every README ``pip install`` either pins
    torch itself, uses --no-deps, installs fxsparse extras, or packages that do not require torch;
    no extra of pyproject.toml requires torch or torchvision (through installed metadata)."""
    import tomllib

    extras = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]["optional-dependencies"]
    for extra, reqs in extras.items():
        for req in reqs:
            assert not _requires_torch(req), (extra, req, _requires_torch(req))
    commands = _readme_pip_commands()
    assert len(commands) >= 5, commands  # the set-up, timm (2), torchvision (2), tensorboard, hf
    for cmd in commands:
        args = [a for i, a in enumerate(cmd[2:]) if not a.startswith("-") and cmd[1 + i] != "--index-url"]
        if "--no-deps" in cmd:
            continue
        for a in args:
            if a.startswith("torch=="):  # the set-up pins the CPU torch itself
                continue
            m = re.fullmatch(r"(?:\.|fxsparse)\[([\w,]+)\]", a)
            if m:
                assert set(m.group(1).split(",")) <= set(extras), (cmd, sorted(extras))
            else:
                assert a.lower() in TORCH_FREE, cmd
    # the README's torchvision command is the hint's for the torch the set-up pins
    pinned = next(a.split("==")[1] for c in commands for a in c if a.startswith("torch=="))
    monkeypatch.setattr(_timm_import.torch, "__version__", pinned + "+cpu")
    hinted = [c for c in _pip_commands(_timm_import.torchvision_install_hint()) if "--no-deps" in c]
    assert hinted and hinted[0] in commands, (hinted, commands)
    assert ["pip", "install", "--no-deps", "timm"] in commands and \
        ["pip", "install", "huggingface_hub", "pyyaml", "safetensors"] in commands


def test_cli_hints_for_absent_model_libraries_keep_torch(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    assert cli_main(["analyze", "timm:resnet18"]) == 2
    assert cli_main(["analyze", "torchvision:resnet18"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    for line in err:
        _check_safe(line)
    assert "pip install --no-deps timm" in err[0]
    assert "torchvision" in err[1] and torch.__version__ in err[1]


# ----- Ctrl-C during fxsparse train ----------------------------------------------------------

@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    make_idx_dir(str(root), n_train=8192, n_test=1024, gz=False, seed=1)  # epochs of ~1.5 s: time to signal
    return str(root)


class _Run:
    """``python -m fxsparse train ...`` in a fresh interpreter, its output read as it comes."""

    def __init__(self, args, cwd):
        self.proc = subprocess.Popen(_fxsparse(*args), cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.out, self.err = [], []
        self._threads = [threading.Thread(target=self._read, args=(s, lines), daemon=True)
                         for s, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for(self, condition, timeout=240):
        end = time.time() + timeout
        while not condition():
            assert self.proc.poll() is None, f"the run ended first: {self.err}"
            assert time.time() < end, "timed out"
            time.sleep(0.02)

    def interrupt(self):
        before = len(self.err)
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=120)
        for t in self._threads:
            t.join(timeout=30)
        return code, self.err[before:]


def _train_args(idx_dir, out):
    return ["train", "--model", "zoo:lenet5", "--data", "mnist", "--data-root", idx_dir, "--batch-size", "32",
            "--epochs", "3", "--finetune-epochs", "0", "--method", "random", "--no-compile", "--threads", "1",
            "--no-progress", "--out", str(out)]


def test_ctrl_c_after_a_checkpoint_names_it_and_the_command_that_continues(idx_dir, tmp_path, capsys):
    """The interrupted run is a fresh ``python -m fxsparse`` (a real SIGINT); the printed command
    that continues it runs in this process through ``cli_main`` (cut for #32: one interpreter
    start and its imports less, ~3.5 CPU s; ``python -m fxsparse`` itself is the interrupted run's)."""
    out = tmp_path / "run"
    run = _Run(_train_args(idx_dir, out), tmp_path)
    run.wait_for(lambda: (out / "last.pt").exists())
    code, after = run.interrupt()
    assert code == 130
    assert 1 <= len(after) <= 3 and not any("Traceback" in line for line in run.err), run.err
    line = after[-1]
    assert "interrupted" in line and str(out / "last.pt") in line and "epoch 1" in line
    command = shlex.split(line.split("continue with: ", 1)[1])
    assert command == ["fxsparse", *_train_args(idx_dir, out), "--resume"]
    # the command really continues the run from that checkpoint
    capsys.readouterr()
    assert cli_main(command[1:]) == 0
    assert f"resumed {out} at epoch 2" in capsys.readouterr().out
    assert [row["epoch"] for row in json.load(open(out / "history.json"))] == [1, 2, 3]


def test_ctrl_c_before_the_first_checkpoint_says_nothing_was_saved(idx_dir, tmp_path):
    out = tmp_path / "run"
    run = _Run(_train_args(idx_dir, out), tmp_path)
    run.wait_for(lambda: any(line.startswith("pruned to") for line in run.out))  # training has begun
    code, after = run.interrupt()
    assert not (out / "last.pt").exists(), "the first epoch ended before the signal: make it longer"
    assert code == 130
    assert len(after) == 1 and not any("Traceback" in line for line in run.err), run.err
    assert "nothing was saved" in after[0] and "start over" in after[0] and "--resume" not in after[0]
    assert shlex.split(after[0].split("start over: ", 1)[1]) == ["fxsparse", *_train_args(idx_dir, out)]


def test_interrupted_message_of_a_resumed_run_adds_no_second_resume(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"epoch": 4, "step": 40}, out / "last.pt")
    argv = ["train", "--out", str(out), "--resume"]
    text = cli.interrupted_message(argv, str(out), resumed=True)
    assert "epoch 4, step 40" in text and text.endswith(shlex.join(["fxsparse", *argv]))


def test_a_ctrl_c_that_torch_swallows_still_ends_the_command(monkeypatch, capsys):
    """torch's C++ code can clear a KeyboardInterrupt raised inside an import it triggers; the
    command must still stop with the interrupt, not report the broken import as an error."""
    def analyze(*a, **k):
        cli.CtrlC.seen = True  # the handler ran, and its KeyboardInterrupt was cleared
        raise fxsparse.TraceError("module 'sympy' has no attribute 'core'")

    monkeypatch.setattr(fxsparse, "analyze", analyze)
    handler = signal.getsignal(signal.SIGINT)
    assert cli_main(["analyze", "zoo:lenet5"]) == 130
    err = capsys.readouterr().err
    assert err == "fxsparse analyze: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is handler  # a caller from Python gets its handler back


# ----- analyze's default input, --version, --help, --list-methods, --dot ---------------------

def test_analyze_uses_a_zoo_models_own_input(capsys):
    """LeNet-5 at 1x28x28 (its zoo default): conv1 20x1x5x5 on 24x24, conv2 50x20x5x5 on 8x8,
    fc1 800->500, fc2 500->10: 2,293,000 multiply-adds, 4.59 MFLOPs (at 3x32x32 it would be
    8.6)."""
    assert cli_main(["analyze", "zoo:lenet5"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "at input (1, 1, 28, 28)" in last and "--input sets another" in last
    assert abs(float(re.search(r"forward ([\d.]+) MFLOPs", last).group(1)) - 4.586) < 0.06
    assert cli.default_input("zoo:resnet20") == (1, 3, 32, 32)
    assert cli.default_input("zoo:no_such_model") == (1, 3, 32, 32)  # load_model names the error
    assert cli.default_input("timm:resnet18") == (1, 3, 32, 32)
    assert cli_main(["analyze", "zoo:lenet5", "--input", "2x3x32x32"]) == 0  # --input still rules
    assert "at input (2, 3, 32, 32)\n" in capsys.readouterr().out


def test_dot_hint_says_graphviz_is_a_separate_install(tmp_path, capsys):
    dot = str(tmp_path / "g.dot")
    assert cli_main(["analyze", "zoo:lenet5", "--dot", dot]) == 0
    assert "apt-get install graphviz" in capsys.readouterr().out
    assert os.path.getsize(dot) > 0


_IMPORTS_PROBE = ("import sys, fxsparse, fxsparse.cli; "
                  "print(sorted(m for m in ('torch', 'numpy', 'fxsparse.zoo', 'fxsparse.analysis') if m in sys.modules))")


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_are_fast_and_do_not_import_torch(tmp_path, flag):
    best = float("inf")
    for _ in range(2):  # the faster of two: a busy machine may stall one start
        t = time.perf_counter()
        r = subprocess.run(_fxsparse(flag), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
        best = min(best, time.perf_counter() - t)
        assert r.returncode == 0, r.stderr
    assert (r.stdout.strip() == f"fxsparse {fxsparse.__version__}") if flag == "--version" else "train" in r.stdout
    assert best < 1.5, f"fxsparse {flag} took {best:.2f} s"
    probe = subprocess.run([sys.executable, "-c", _IMPORTS_PROBE + f"; fxsparse.cli.build_parser(['{flag}'])"],
                           cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"


_TRAIN_HELP_PROBE = """
import sys, time
import fxsparse.cli
t = time.perf_counter()
try:
    fxsparse.cli.main(["train", "--help"])
except SystemExit as exc:
    assert exc.code == 0, exc.code
took = time.perf_counter() - t
print("IMPORTED", sorted(m for m in ("torch", "numpy", "fxsparse.methods.registry", "fxsparse.training.trainer")
                         if m in sys.modules), f"{took:.3f}")
"""


def test_train_help_is_fast_imports_no_torch_and_lists_every_method_flag(tmp_path):
    """`fxsparse train --help` reads the methods' flags (fxsparse.methods.flags) and the
    defaults (fxsparse.training.config) as plain data: 2-5 s when it imported every method."""
    from fxsparse.methods import get_method, list_methods

    r = subprocess.run([sys.executable, "-c", _TRAIN_HELP_PROBE], cwd=tmp_path, env=_env(COLUMNS="200"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    help_text, probe = r.stdout.rsplit("IMPORTED ", 1)
    imported, took = probe.rsplit(" ", 1)
    assert imported == "[]", imported
    assert float(took) < 0.5, f"building and printing train's help took {took} s"
    flags = [f for name in list_methods() for option, _ in get_method(name).cli_options for f in option]
    assert "--score-lr" in flags and "--weight-masks" in flags  # VR-PGE's
    for flag in flags + ["--model", "--method", "--keep", "--nproc", "--threads"]:
        assert re.search(rf"^  {re.escape(flag)}\b", help_text, flags=re.M), flag
    assert "(default: l1_filter, from scratch and with --init)" in " ".join(help_text.split())


@pytest.mark.parametrize("command", ["analyze", "zoo", "report", "train", "bench"])
def test_each_commands_help_is_fast(tmp_path, command):
    best = float("inf")
    for _ in range(2):  # the faster of two: a busy machine may stall one start
        t = time.perf_counter()
        r = subprocess.run(_fxsparse(command, "--help"), cwd=tmp_path, env=_env(), capture_output=True, text=True,
                           timeout=60)
        best = min(best, time.perf_counter() - t)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"usage: fxsparse {command}")
    assert best < 1.5, f"fxsparse {command} --help took {best:.2f} s"


def test_method_flags_are_declared_once_in_the_flags_module():
    """The CLI reads fxsparse.methods.flags; a method class that declares its own
    ``cli_options`` too must declare the same ones (the registry sets the entry otherwise)."""
    from fxsparse.methods import flags, get_method, list_methods

    assert set(flags.FLAGS) <= set(list_methods())
    for name in list_methods():
        assert get_method(name).cli_options == flags.FLAGS.get(name, ()), \
            f"method {name!r}: its flags differ from fxsparse/methods/flags.py, where the CLI reads them"


_LAZY_METHODS_PROBE = """
import sys
import fxsparse.methods as methods
from fxsparse.methods import flags, default_method
assert "torch" not in sys.modules and "fxsparse.methods.registry" not in sys.modules
from fxsparse.methods.vrpge import VRPGE   # one method module first: the look-up still finds all
names = methods.list_methods()
assert {"vrpge", "dense", "snip", "rigl", "l1_filter"} <= set(names), names
assert methods.get_method("vrpge") is VRPGE and methods.snip.__name__ == "fxsparse.methods.snip"
print("OK", default_method(False), len(names))
"""


def test_methods_package_loads_its_methods_on_the_first_look_up(tmp_path):
    r = subprocess.run([sys.executable, "-c", _LAZY_METHODS_PROBE], cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OK l1_filter ")


def test_a_method_registered_from_python_gets_its_flags_on_the_command_line():
    from fxsparse.methods import Method, register_method, unregister_method

    class _Flagged(Method):
        level = "none"
        cli_options = ((("--toy-rounds",), dict(dest="toy_rounds", type=int, default=None, help="rounds")),)

    register_method("toy_flagged_for_test")(_Flagged)
    try:
        args = cli.build_parser(["train"]).parse_args(["train", "--toy-rounds", "3"])
        assert cli.method_options_from(args, "toy_flagged_for_test") == {"toy_rounds": 3}
        assert cli.method_options_from(args, "vrpge") == {}  # no flag given: the setting's defaults apply
    finally:
        unregister_method("toy_flagged_for_test")
    with pytest.raises(SystemExit):  # unregistered: the flag is gone
        cli.build_parser(["train"]).parse_args(["train", "--toy-rounds", "3"])


def test_lazy_package_keeps_every_public_name():
    import importlib

    for name in fxsparse.__all__:
        module = importlib.import_module(fxsparse._EXPORTS[name])
        assert getattr(fxsparse, name) is getattr(module, name), name
    from fxsparse import analyze, zoo  # noqa: F401  (a name and a subpackage)

    assert fxsparse.zoo is zoo and fxsparse.rules.registry.lookup is not None
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        fxsparse.no_such_name


def _readme_method_levels():
    text = open(os.path.join(ROOT, "README.md")).read()
    rows = re.findall(r"^\| `(\w+)`(?: \(default\))? \| ([^|]+) \|", text, flags=re.M)
    return {name: level.strip() for name, level in rows}


def test_list_methods_shows_every_level_the_readme_table_gives(capsys):
    assert cli_main(["train", "--list-methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    level_col, paper_col = lines[0].index("level"), lines[0].index("paper")
    shown = {ln.split()[0]: ln[level_col:paper_col].strip() for ln in lines[2:]}
    readme = _readme_method_levels()
    assert set(readme) <= set(shown), set(readme) - set(shown)
    for name, level in readme.items():
        expected = {"-": "none", "weight (per channel)": "weight"}.get(level, level)
        assert shown[name] == expected, (name, shown[name], level)
    assert shown["snip"] == "channel or weight" and shown["magnitude"] == "weight"


# ----- --nproc ------------------------------------------------------------------------------

def test_launch_sets_omp_threads_so_torchrun_prints_no_banner(monkeypatch):
    seen = []

    class FakePopen:
        def __init__(self, cmd, env, stderr):
            seen.append((cmd, env))
            read, write = os.pipe()
            os.write(write, b"worker output\n")
            os.close(write)
            self.stderr = os.fdopen(read, "rb")

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cli.launch(2, ["train", "--nproc", "2", "--epochs", "1"]) == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cli.launch(2, ["train", "--nproc=2"]) == 0
    (cmd1, env1), (cmd2, env2) = seen
    assert env1["OMP_NUM_THREADS"] == "1" and env2["OMP_NUM_THREADS"] == "3"  # the caller's setting wins
    assert cmd1[-3:] == ["train", "--epochs", "1"] and cmd2[-1] == "train"  # --nproc is left out
    # torchrun prints the banner exactly when OMP_NUM_THREADS is unset (and several processes run)
    src = open(importlib.util.find_spec("torch.distributed.run").origin).read()
    assert 'if "OMP_NUM_THREADS" not in os.environ and nproc_per_node > 1:' in src


@pytest.mark.xdist_group("nproc2_run")  # one worker: the two-process run (tests/conftest.py) runs once
def test_nproc_run_prints_only_the_progress_bar_on_stderr(nproc2_run):
    """`fxsparse train --nproc 2` with OMP_NUM_THREADS unset, as a user runs it: torchrun's banner
    about OMP_NUM_THREADS, warnings of torch (the profiler's under DDP, gloo's) or of the
    processes would cut through the progress bar; stderr holds the bar's frames and nothing else."""
    r, _, _ = nproc2_run
    assert r.returncode == 0, r.stderr[-3000:]
    frames = [f for f in re.split(r"[\r\n]", r.stderr) if f.strip()]
    assert any(f.startswith("epoch 1:") for f in frames), r.stderr[-2000:]  # the bar was there
    assert [f for f in frames if not re.match(r"epoch \d+: ", f)] == [], r.stderr[-3000:]
    assert "summary" in r.stdout


def test_output_cut_short_by_a_pipe_is_no_error():
    """`fxsparse train --list-methods | head -1`: the reader is gone before the table is written
    (here: the pipe's read end closed before the command prints anything)."""
    proc = subprocess.Popen([sys.executable, "-m", "fxsparse", "train", "--list-methods"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
