"""The ``fxsparse`` command line: analyze, zoo, train, report, bench."""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch
from tabulate import tabulate

from .zoo import load_model


def parse_input(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input must look like 2x3x32x32, got {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"--input sizes must be positive, got {text!r}")
    return dims


def cmd_analyze(args) -> int:
    import fxsparse

    in_chans = args.input[1] if len(args.input) > 1 else None
    model = load_model(args.model, in_chans=in_chans).eval()
    x = torch.randn(*args.input)
    t = time.perf_counter()
    try:
        graph = fxsparse.analyze(model, (x,))
    except fxsparse.FxsparseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    took = time.perf_counter() - t
    print(graph.summary())
    print(f"\nanalysed in {took:.2f} s; forward {graph.flops['total'] / 1e6:.1f} MFLOPs at input {tuple(args.input)}")
    if args.dot:
        graph.to_dot(args.dot)
        svg = args.dot.rsplit(".", 1)[0] + ".svg"
        print(f"wrote {args.dot} (the data flow, layers coloured by channel group; render it with Graphviz: "
              f"dot -Tsvg {args.dot} -o {svg})")
    if args.json:
        graph.to_json(args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_zoo(args) -> int:
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
    import fxsparse
    from fxsparse.rewrite.reference import masked_reference

    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(0))
    small = fxsparse.export(model, graph, keep).eval()
    out = small(x)
    ref = masked_reference(graph, keep, x)
    err = float((out - ref).abs().max())
    out.sum().backward()
    if err > 1e-4 * max(1.0, float(ref.abs().max())):
        return f"FAIL: export differs from masked reference by {err:.2e}"
    return "pass"


def add_train_arguments(p):
    from fxsparse.training.trainer import TrainConfig

    d = TrainConfig()
    p.add_argument("--model", default=d.model, help=f"zoo:NAME, timm:NAME, torchvision:NAME or module.path:factory (default {d.model})")
    p.add_argument("--data", default=d.data, help="fashion-mnist, mnist, cifar10, cifar100 or folder (default %(default)s)")
    p.add_argument("--data-root", default=None, help="data directory (Fashion-MNIST defaults to Debian's /usr/share/datasets/fashion-mnist)")
    p.add_argument("--method", default=d.method, help="training method, see `fxsparse train --list-methods` (default %(default)s)")
    p.add_argument("--list-methods", action="store_true", help="list the registered methods and exit")
    p.add_argument("--keep", type=float, default=d.keep, help="budget as a fraction of the dense model, in (0, 1] (default %(default)s)")
    p.add_argument("--budget", choices=["channels", "flops"], default=d.budget, help="what --keep counts (default %(default)s)")
    p.add_argument("--epochs", type=float, default=d.epochs,
                   help="search epochs; a fraction ends the search mid-epoch, e.g. 0.25 (default %(default)s)")
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
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--precision", default=d.precision, choices=["fp32", "bf16", "fp16"],
                   help="autocast dtype of the training steps; fp16 adds a gradient scaler and needs CUDA (default %(default)s)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for the model and the inputs")
    p.add_argument("--nproc", type=int, default=None, help="train in N processes (DistributedDataParallel; "
                   "launches `torchrun --nproc-per-node N -m fxsparse train ...`); --batch-size stays the global batch")
    p.add_argument("--log-dir", default=None, help="also write TensorBoard scalars there (needs tensorboard; "
                   "history.csv and steps.csv are always written to --out)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    for flags, kwargs in method_cli_options():  # the methods' own flags (VR-PGE's --score-lr, --granularity, ...)
        p.add_argument(*flags, **kwargs)


def method_cli_options() -> list:
    """(flags, argparse keywords) of every registered method's ``cli_options``, each flag once."""
    from .methods import get_method, list_methods

    seen, out = set(), []
    for name in list_methods():
        for flags, kwargs in get_method(name).cli_options:
            if not seen.intersection(flags):
                seen.update(flags)
                out.append((flags, kwargs))
    return out


def method_options_from(args, method: str) -> dict:
    """The ``method_options`` the flags of ``method`` (its ``cli_options``) set."""
    from .methods import get_method

    return {kw["dest"]: getattr(args, kw["dest"]) for _, kw in get_method(method).cli_options}


def cmd_train(args) -> int:
    import dataclasses

    from .methods import list_methods
    from fxsparse.training.trainer import TrainConfig, Trainer

    if args.list_methods:
        from .methods import DEFAULT_METHOD, get_method

        rows = [[name + (" (default)" if name == DEFAULT_METHOD else ""), get_method(name).level, get_method(name).paper]
                for name in list_methods()]
        print(tabulate(rows, headers=["method", "level", "paper"]))
        return 0
    if args.nproc is not None and args.nproc < 1:
        raise ValueError(f"--nproc must be at least 1 (the number of training processes), got {args.nproc}")
    if args.nproc is not None and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch(args.nproc, args.argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from fxsparse.core.errors import FxsparseError

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields},
                             method_options=method_options_from(args, args.method))
        Trainer(config, resume=args.resume, progress=args.progress).run()
    except (FxsparseError, ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"fxsparse train: error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    return 0


def launch(nproc: int, argv: list) -> int:
    """Run ``fxsparse train`` (``argv`` without ``--nproc``) in ``nproc`` processes under torchrun."""
    import subprocess

    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "fxsparse", *rest]
    return subprocess.call(cmd)


def cmd_report(args) -> int:
    from fxsparse.training.report import report

    try:
        for path in report(args.dir):
            print(path)
    except (FileNotFoundError, ValueError) as err:
        print(f"fxsparse report: error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="fxsparse", description="Channel-level sparse training that is fast for real.")
    parser.add_argument("--version", action="version", version=f"fxsparse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("analyze", help="find the channel groups of a model and print them")
    p.add_argument("model", help="zoo:NAME, timm:NAME, torchvision:NAME or module.path:factory")
    p.add_argument("--input", type=parse_input, default=(1, 3, 32, 32), help="example input shape, e.g. 2x3x32x32")
    p.add_argument("--dot", help="write the data flow with the channel groups as Graphviz DOT "
                   "(render: dot -Tsvg FILE -o groups.svg)")
    p.add_argument("--json", help="write the groups as compact JSON (schema: fxsparse.ChannelGraph.to_json)")
    p.set_defaults(func=cmd_analyze)
    z = sub.add_parser("zoo", help="list the model zoo (params, FLOPs, prunable groups)")
    z.add_argument("--input", type=parse_input, default=None, help="input shape for every model (default: each model's own)")
    z.add_argument("--check", action="store_true", help="also export at keep 0.5 and compare with the masked reference")
    z.add_argument("models", nargs="*", help="only these zoo models (default: all; all take about 2 min on 2 cores)")
    z.set_defaults(func=cmd_zoo)
    t = sub.add_parser("train", help="sparse training on real data: search, fine-tune, export")
    add_train_arguments(t)
    t.set_defaults(func=cmd_train)
    r = sub.add_parser("report", help="plots (PNG) of a training run: curves, keep per layer, score histograms")
    r.add_argument("dir", help="the --out directory of a run")
    r.set_defaults(func=cmd_report)
    b = sub.add_parser("bench", help="training-step time: dense vs masked-dense vs sparse vs exported", add_help=False)
    b.set_defaults(func=None)
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "bench":
        from .bench import main as bench_main

        bench_main(argv[1:])
        return 0
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except ValueError as err:
        print(f"fxsparse {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
