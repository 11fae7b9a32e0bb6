"""The ``fxsparse`` command line: analyze, zoo, train, report, bench."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import warnings

from tabulate import tabulate

# torch, fxsparse.zoo and the trainer are imported by the commands that use them: `fxsparse
# --version` and `fxsparse --help` must not wait seconds for torch


def parse_input(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input must look like 2x3x32x32, got {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"--input sizes must be positive, got {text!r}")
    return dims


def default_input(spec: str) -> tuple[int, ...]:
    """``fxsparse analyze``'s input shape without ``--input``: a zoo model's own input size
    (``zoo.info(NAME).default_input``, batch 1), else 1x3x32x32."""
    from . import zoo

    prefix, _, name = spec.partition(":")
    if prefix == "zoo" and name in zoo.names():
        return (1,) + tuple(zoo.info(name).default_input)
    return (1, 3, 32, 32)


def cmd_analyze(args) -> int:
    import torch

    import fxsparse
    from .zoo import load_model

    shape = args.input or default_input(args.model)
    in_chans = shape[1] if len(shape) > 1 else None
    model = load_model(args.model, in_chans=in_chans).eval()
    x = torch.randn(*shape)
    t = time.perf_counter()
    try:
        graph = fxsparse.analyze(model, (x,))
    except fxsparse.FxsparseError as exc:
        CtrlC.check()  # an error a swallowed Ctrl-C caused is no error to report
        print(f"error: {exc}", file=sys.stderr)
        return 2
    took = time.perf_counter() - t
    print(graph.summary())
    default = "" if args.input else " (the model's default; --input sets another)"
    print(f"\nanalysed in {took:.2f} s; forward {graph.flops['total'] / 1e6:.1f} MFLOPs at input {shape}{default}")
    if args.dot:
        graph.to_dot(args.dot)
        svg = args.dot.rsplit(".", 1)[0] + ".svg"
        print(f"wrote {args.dot} (the data flow, layers coloured by channel group; render it with Graphviz, a "
              f"separate install (apt-get install graphviz): dot -Tsvg {args.dot} -o {svg})")
    if args.json:
        graph.to_json(args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_zoo(args) -> int:
    import torch

    import fxsparse
    from . import zoo

    rows, failures = [], 0
    names = zoo.names()
    unknown = [n for n in args.models or () if n not in names]
    if unknown:
        raise ValueError(f"no zoo model {', '.join(map(repr, unknown))}. Available: {', '.join(names)}")
    names = [n for n in names if not args.models or n in args.models]
    for i, name in enumerate(names):
        t = time.perf_counter()
        info = zoo.info(name)
        shape = args.input or (2,) + tuple(info.default_input)
        print(f"[{i + 1}/{len(names)}] {name} at input {'x'.join(map(str, shape[1:]))} ...", end="", file=sys.stderr, flush=True)
        model = zoo.create(name, in_chans=shape[1]).eval()
        x = torch.randn(*shape)
        params = sum(p.numel() for p in model.parameters())
        row = [name, info.family, f"{params / 1e6:.2f}M", "x".join(map(str, shape[1:]))]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                g = fxsparse.analyze(model, (x,))
            row += [f"{g.flops['total'] / shape[0] / 1e6:.1f}", len(g.prunable_groups), g.num_prunable_channels]
            if args.check:
                row.append(_check(model, g, x))
                failures += row[-1] != "pass"
        except Exception as exc:  # report and go on: this is a survey
            row += ["-", "-", "-", f"FAIL {type(exc).__name__}: {str(exc)[:80]}"]
            failures += 1
        print(f" {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        rows.append(row)
    headers = ["model", "family", "params", "input (CxHxW)", "MFLOPs per sample at that input", "prunable groups",
               "prunable channels"]
    if args.check:
        headers.append("analyze+export")
    print(tabulate(rows, headers=headers))
    if args.check:
        print(f"\n{len(rows) - failures}/{len(rows)} pass")
    return 1 if failures else 0


def _check(model, graph, x) -> str:
    import torch

    import fxsparse

    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(0))
    small = fxsparse.export(model, graph, keep).eval()
    check = fxsparse.check_against_reference(small, graph, keep, (x,))
    if not check.ok:
        return f"FAIL: {check.message}"
    check.first_output.sum().backward()
    return "pass"


def add_train_arguments(p):
    # all three torch-free: `fxsparse train --help` must not wait for torch and the methods
    from fxsparse.methods import default_method
    from fxsparse.training.config import TrainConfig

    d = TrainConfig()
    p.add_argument("--model", default=d.model, help=f"zoo:NAME, timm:NAME, torchvision:NAME or module.path:factory (default {d.model})")
    p.add_argument("--init", default=None, metavar="PATH", help="start from these trained weights of --model: a "
                   "state_dict (torch.save) or safetensors file, or the --out directory of an earlier run (e.g. "
                   "--method dense); the run then compresses the trained model")
    p.add_argument("--bn-batches", type=int, default=d.bn_batches, help="training batches the pruned model's "
                   "BatchNorm statistics are re-estimated on before its first step (default %(default)s; 0: keep them)")
    p.add_argument("--data", default=d.data, help="fashion-mnist, mnist, cifar10, cifar100 or folder (default %(default)s)")
    p.add_argument("--data-root", default=None, help="data directory (Fashion-MNIST defaults to Debian's /usr/share/datasets/fashion-mnist)")
    scratch, trained = default_method(False), default_method(True)
    default = (f"{scratch}, from scratch and with --init" if scratch == trained
               else f"{scratch}; with --init, {trained}")
    p.add_argument("--method", default=None, help="training method, see `fxsparse train --list-methods` "
                   f"(default: {default})")
    p.add_argument("--list-methods", action="store_true", help="list the registered methods and exit")
    p.add_argument("--keep", type=float, default=d.keep, help="budget as a fraction of the dense model, in (0, 1] (default %(default)s)")
    p.add_argument("--budget", choices=["channels", "flops"], default=d.budget, help="what --keep counts (default %(default)s)")
    p.add_argument("--epochs", type=float, default=d.epochs,
                   help="search epochs of a method that searches (a fixed-mask method, e.g. l1_filter, trains "
                   "--epochs + --finetune-epochs from its mask); a fraction ends the search mid-epoch, e.g. 0.25 "
                   "(default %(default)s)")
    p.add_argument("--finetune-epochs", type=float, default=d.finetune_epochs,
                   help="fine-tune epochs with the final mask (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate of the weights, cosine (default %(default)s)")
    p.add_argument("--finetune-lr", type=float, default=d.finetune_lr, help="restart the fine-tune at this SGD "
                   "learning rate, cosine (default: continue the run's one cosine schedule; the authors restart "
                   "at 1e-3 after a 300-epoch search)")
    p.add_argument("--finetune-bn-eval", action="store_true", help="fine-tune with BN in eval mode (the authors' setting)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager mode")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--limit-batches", type=int, default=None, help="at most this many batches per epoch")
    p.add_argument("--out", default=d.out, help="run directory: checkpoints, history, exported model (default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--threads", type=int, default=None, help="torch's CPU threads (default: the CPUs this process "
                   "may use less those busy with other work at the start, at most torch's default, which follows "
                   "OMP_NUM_THREADS; where CPUs are busy, OpenMP threads also sleep while they wait: "
                   "OMP_WAIT_POLICY=PASSIVE, unless set)")
    p.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--precision", default=d.precision, choices=["fp32", "bf16", "fp16"],
                   help="autocast dtype of the training steps; fp16 adds a gradient scaler and needs CUDA (default %(default)s)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for the model and the inputs")
    p.add_argument("--nproc", type=int, default=None, help="train in N processes (DistributedDataParallel; "
                   "launches `torchrun --nproc-per-node N -m fxsparse train ...`); --batch-size stays the global batch")
    p.add_argument("--log-dir", default=None, help="also write TensorBoard scalars there (needs tensorboard; "
                   "history.csv and steps.csv are always written to --out)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    # the methods' own flags (VR-PGE's --score-lr, --granularity, ...): a method reads only its own
    group = p.add_argument_group("the methods' own flags", "VR-PGE's (--method vrpge) and those of methods "
                                 "registered from Python; a method reads only its own")
    for flags, kwargs in method_cli_options():
        group.add_argument(*flags, **kwargs)


def method_cli_options() -> list:
    """(flags, argparse keywords) of every method's flags, each flag once: the built-ins' from
    :mod:`fxsparse.methods.flags` (plain data, no torch), and those of methods registered from
    Python so far (a user's ``cli_options``), without importing any method."""
    from .methods import flags

    registry = sys.modules.get("fxsparse.methods.registry")  # loaded: methods may be registered
    declared = [*flags.FLAGS.values(), *(registry.registered_cli_options() if registry else ())]
    seen, out = set(), []
    for options in declared:
        for flags_, kwargs in options:
            if not seen.intersection(flags_):
                seen.update(flags_)
                out.append((flags_, kwargs))
    return out


def method_options_from(args, method: str) -> dict:
    """The ``method_options`` the flags of ``method`` (its ``cli_options``) set."""
    from .methods import get_method

    # a flag left at None was not given: the method's default for the setting applies
    return {kw["dest"]: getattr(args, kw["dest"]) for _, kw in get_method(method).cli_options
            if getattr(args, kw["dest"]) is not None}


def check_method_flags(args, method: str, named: bool) -> None:
    """A flag of another method is an error, not silently dropped: e.g. ``--granularity``
    without ``--method vrpge`` (the default, l1_filter, takes no such flag)."""
    from .methods import get_method, list_methods

    own = {kw["dest"] for _, kw in get_method(method).cli_options}
    foreign = [(flags_[0], kw["dest"]) for flags_, kw in method_cli_options()
               if kw["dest"] not in own and getattr(args, kw["dest"], None) is not None]
    if foreign:
        owners = sorted({name for name in list_methods() for _, dest in foreign
                         if dest in {kw["dest"] for _, kw in get_method(name).cli_options}})
        run = f"--method {method}" + ("" if named else " (the default)")
        raise ValueError(f"{', '.join(f for f, _ in foreign)}: {'flags' if len(foreign) > 1 else 'a flag'} of "
                         f"{' or '.join(owners)}, which {run} does not take; add "
                         f"{' or '.join('--method ' + o for o in owners)} to run it")


def cmd_train(args) -> int:
    import dataclasses

    from .methods import default_method, list_methods
    from fxsparse.training.trainer import TrainConfig, Trainer

    if args.list_methods:
        from .methods import get_method

        marks = {default_method(False): " (default)", default_method(True): " (default with --init)"}
        if default_method(False) == default_method(True):
            marks = {default_method(False): " (default)"}
        rows = [[name + marks.get(name, ""), " or ".join(method_levels(get_method(name))),
                 get_method(name).paper] for name in list_methods()]
        print(tabulate(rows, headers=["method", "level", "paper"]))
        return 0
    if args.nproc is not None and args.nproc < 1:
        raise ValueError(f"--nproc must be at least 1 (the number of training processes), got {args.nproc}")
    if args.nproc is not None and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch(args.nproc, args.argv)
    import torch

    from fxsparse.core.errors import FxsparseError
    from fxsparse.training import threads

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    before = torch.get_num_threads()  # given back at the end: a caller from Python keeps its own
    plan = threads.apply(getattr(args, "thread_plan", None) or threads.plan(args.threads))
    if os.environ.get("RANK", "0") == "0":
        print(plan.describe(), flush=True)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    named, args.method = args.method, args.method or default_method(trained=args.init is not None)
    try:
        check_method_flags(args, args.method, named is not None)
        config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields},
                             method_options=method_options_from(args, args.method))
        trainer = Trainer(config, resume=args.resume, progress=args.progress, callbacks=[CtrlC.check])
        finished = trainer.finished  # a finished run changes nothing, its summary.json included
        trainer.run()
        if not finished and trainer.writer:
            record_threads(os.path.join(trainer.config.out, "summary.json"), plan)
    except (FxsparseError, ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        CtrlC.check()  # an error a swallowed Ctrl-C caused is no error to report
        print(f"fxsparse train: error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(before)
    return 0


def record_threads(summary_path: str, plan) -> None:
    """Add the thread choice (``threads`` of :mod:`fxsparse.training.threads`) to summary.json."""
    import json

    from fxsparse.training import checkpoint

    with open(summary_path) as f:
        summary = json.load(f)
    summary["threads"] = plan.record()
    checkpoint.write_json_atomic(summary, summary_path)


def thread_plan_for(argv: list):
    """The thread plan of ``fxsparse train ARGS`` (:func:`fxsparse.training.threads.plan`), made
    before anything imports torch: libgomp reads OMP_WAIT_POLICY once, when torch loads it. None
    for other commands, --help, --list-methods and the launcher of --nproc (its processes plan
    their own)."""
    if next((a for a in argv if not a.startswith("-")), None) != "train" or \
            {"-h", "--help", "--list-methods"} & set(argv):
        return None

    def value(flag):
        for i, a in enumerate(argv):
            if a == flag and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(flag + "="):
                return a.split("=", 1)[1]
        return None

    try:
        nproc = int(value("--nproc") or 1)
        requested = int(value("--threads")) if value("--threads") is not None else None
    except ValueError:  # argparse says what is wrong
        return None
    if (nproc > 1 and "WORLD_SIZE" not in os.environ) or (requested is not None and requested < 1):
        return None
    from fxsparse.training import threads  # imports no torch

    return threads.plan(requested)


def method_levels(cls) -> list:
    """The levels a method class runs at, its default first (``ScoreMethod``s take ``--level``)."""
    return [cls.level] + [lv for lv in getattr(cls, "supported_levels", ()) if lv != cls.level]


def interrupted_message(argv: list, out: str, resumed: bool) -> str:
    """What ``fxsparse train`` prints on Ctrl-C (one line): whether ``out`` holds a checkpoint
    (``last.pt``, written atomically at each epoch's end, so an interrupt never leaves a broken
    one) and the command that continues the run, or that the run must start over."""
    import shlex

    ckpt = os.path.join(out, "last.pt")
    if not os.path.isfile(ckpt):
        rest = [a for a in argv if a != "--resume"]
        return (f"fxsparse train: interrupted before the first checkpoint, so nothing was saved ({ckpt} does not "
                f"exist); the run must start over: {shlex.join(['fxsparse', *rest])}")
    where = ""
    try:  # the epoch it holds; mmap: only the pickle is read, not the tensors
        import torch

        saved = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        where = f": epoch {saved['epoch']}, step {saved['step']}"
    except Exception:  # the line must come out whatever the file holds
        pass
    rest = list(argv) if resumed else [*argv, "--resume"]
    return (f"fxsparse train: interrupted; the last checkpoint ({ckpt}{where}) is intact, the steps after it are "
            f"lost; continue with: {shlex.join(['fxsparse', *rest])}")


def launch(nproc: int, argv: list) -> int:
    """Run ``fxsparse train`` (``argv`` without ``--nproc``) in ``nproc`` processes under torchrun."""
    import subprocess
    import threading

    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "fxsparse", *rest]
    # OMP_NUM_THREADS set here (torchrun's own default, 1 thread per process, unless the caller set
    # one): torchrun then prints no banner about setting it through the progress bar.
    # FXSPARSE_LAUNCHER: the processes leave the Ctrl-C line to this one, which knows the command
    # line with --nproc; torchrun's stderr passes through here so that its shutdown warnings and
    # traceback after a Ctrl-C can be left out.
    env = {"OMP_NUM_THREADS": "1", **os.environ, "FXSPARSE_LAUNCHER": "1"}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)

    def forward():
        out = getattr(sys.stderr, "buffer", None)
        while chunk := os.read(proc.stderr.fileno(), 1 << 16):
            if not CtrlC.seen:
                if out is not None:
                    out.write(chunk)
                else:
                    sys.stderr.write(chunk.decode(errors="replace"))
                sys.stderr.flush()

    forwarder = threading.Thread(target=forward, daemon=True)
    forwarder.start()
    try:
        code = proc.wait()
        forwarder.join()
        return code
    except KeyboardInterrupt:  # Ctrl-C reached torchrun and its processes too: let them end, then main's line
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        proc.wait()
        raise


def cmd_report(args) -> int:
    from fxsparse.training.report import report

    try:
        for path in report(args.dir):
            print(path)
    except (FileNotFoundError, ValueError) as err:
        print(f"fxsparse report: error: {err}", file=sys.stderr)
        return 2
    return 0


class CtrlC:
    """Ctrl-C raises KeyboardInterrupt, as with Python's own handler, and is remembered: torch's
    C++ code clears a KeyboardInterrupt that lands in a Python import it triggers (torch.fx's
    first trace imports torch._inductor from inside ``symbolize_tracebacks``), after which the
    command would go on as if nothing happened, or fail on the half-imported modules with a
    misleading error. The commands call :meth:`check` where they would report an error or go
    on (``fxsparse train``: at every step), and :func:`main` before it reports success."""

    seen = False

    @classmethod
    def handler(cls, signum, frame):
        cls.seen = True
        raise KeyboardInterrupt

    @classmethod
    def check(cls, *args, **kwargs):  # also a Trainer callback: cb(trainer, event, **info)
        if cls.seen:
            raise KeyboardInterrupt


def _close_progress_bars() -> None:
    """Close the live tqdm bars (the trainer's clears its line), so that the Ctrl-C line is the last."""
    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
    for bar in list(getattr(tqdm, "_instances", None) or ()):
        try:
            bar.close()
        except Exception:  # a bar that cannot close must not hide the line
            pass


def build_parser(argv: list) -> argparse.ArgumentParser:
    """The ``fxsparse`` parser; ``train``'s many flags only when ``argv`` runs ``train``. Building
    it imports no torch: the commands import what they use."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="fxsparse", description="Channel-level sparse training that is fast for real.")
    parser.add_argument("--version", action="version", version=f"fxsparse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("analyze", help="find the channel groups of a model and print them")
    p.add_argument("model", help="zoo:NAME, timm:NAME, torchvision:NAME or module.path:factory")
    p.add_argument("--input", type=parse_input, default=None, help="example input shape, e.g. 2x3x32x32 (default: "
                   "a zoo model's own input size at batch 1, e.g. 1x1x28x28 for zoo:lenet5; 1x3x32x32 otherwise)")
    p.add_argument("--dot", help="write the data flow with the channel groups as Graphviz DOT "
                   "(render it with Graphviz, a separate install (apt-get install graphviz): dot -Tsvg FILE -o groups.svg)")
    p.add_argument("--json", help="write the groups as compact JSON (schema: fxsparse.ChannelGraph.to_json)")
    p.set_defaults(func=cmd_analyze)
    z = sub.add_parser("zoo", help="list the model zoo (params, FLOPs, prunable groups)")
    z.add_argument("--input", type=parse_input, default=None, help="input shape for every model (default: each model's own)")
    z.add_argument("--check", action="store_true", help="also export at keep 0.5 and compare with the masked reference")
    z.add_argument("models", nargs="*", help="only these zoo models (default: all; all take about 2 min on 2 cores)")
    z.set_defaults(func=cmd_zoo)
    t = sub.add_parser("train", help="sparse training on real data: search, fine-tune, export")
    if next((a for a in argv if not a.startswith("-")), None) == "train":
        add_train_arguments(t)
    t.set_defaults(func=cmd_train)
    r = sub.add_parser("report", help="plots (PNG) of a training run: curves, keep per layer, learned widths")
    r.add_argument("dir", help="the --out directory of a run")
    r.set_defaults(func=cmd_report)
    b = sub.add_parser("bench", add_help=False,
                       help="training-step time: dense vs masked-dense vs sparse vs exported; subcommands "
                            "cold-start (time to the first step), phases (one step's phases)")
    b.set_defaults(func=None)
    return parser


def main(argv=None) -> int:
    import threading

    console = argv is None  # the fxsparse command itself, not a call from Python
    if argv is None:
        argv = sys.argv[1:]
    args = None
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT)
    if in_main_thread:
        CtrlC.seen = False
        signal.signal(signal.SIGINT, CtrlC.handler)
    try:
        if argv and argv[0] == "bench":
            import importlib

            from .bench_args import SUBCOMMANDS, parse_command  # torch-free: `fxsparse bench --help` is fast

            command, bench_args = parse_command(argv[1:])
            module, function = SUBCOMMANDS[command]
            getattr(importlib.import_module(module), function)(bench_args)  # torch, once the arguments are good
            return 0
        plan = thread_plan_for(argv)  # before anything imports torch (see thread_plan_for)
        args = build_parser(argv).parse_args(argv)
        args.argv = argv
        args.thread_plan = plan
        code = args.func(args)
        CtrlC.check()
        return code
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `fxsparse ... | head`: the reader has what it wanted
        if console:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except Exception as err:  # after a swallowed Ctrl-C, whatever broke is no error to report
        if CtrlC.seen:
            pass
        elif isinstance(err, ValueError) and args is not None:
            print(f"fxsparse {args.command}: error: {err}", file=sys.stderr)
            return 2
        else:
            raise
    finally:  # the process that was interrupted ends ignoring Ctrl-C; a caller from Python gets its handler back
        if in_main_thread and not (console and CtrlC.seen):
            signal.signal(signal.SIGINT, previous)
    # Ctrl-C: one line, no traceback
    if in_main_thread and console:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the line short
    command = args.command if args is not None else (argv[0] if argv and argv[0] in ("bench", "train") else "")
    if command != "train" or getattr(args, "list_methods", False):
        print(f"fxsparse{' ' + command if command else ''}: interrupted", file=sys.stderr, flush=True)
    elif args is None:
        import shlex

        print("fxsparse train: interrupted while starting, before anything was written; run the same command to "
              f"start again: {shlex.join(['fxsparse', *argv])}", file=sys.stderr, flush=True)
    elif os.environ.get("FXSPARSE_LAUNCHER") is None and os.environ.get("RANK", "0") == "0":
        # one process says it (under --nproc, the launcher: it knows the command line with --nproc)
        _close_progress_bars()
        print(interrupted_message(args.argv, args.out, args.resume), file=sys.stderr, flush=True)
    return 130


if __name__ == "__main__":
    sys.exit(main())
