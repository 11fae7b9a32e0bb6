"""The ``fxsparse`` command line: ``fxsparse analyze``, ``fxsparse zoo``."""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import warnings

import torch
from tabulate import tabulate


def parse_input(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input must look like 2x3x32x32, got {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"--input sizes must be positive, got {text!r}")
    return dims


def load_model(spec: str, num_classes: int = 10, in_chans: int | None = None) -> torch.nn.Module:
    """'zoo:NAME' or 'package.module:factory' (called with no arguments)."""
    from . import zoo

    if spec.startswith("zoo:"):
        name = spec[4:]
        if name not in zoo.list():
            raise SystemExit(f"error: no zoo model '{name}'. Available: {', '.join(zoo.list())}")
        kw = {} if in_chans is None else {"in_chans": in_chans}
        return zoo.create(name, num_classes=num_classes, **kw)
    if ":" not in spec:
        raise SystemExit(f"error: MODEL must be 'zoo:NAME' or 'module.path:factory', got {spec!r}")
    mod_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"error: cannot load {spec!r}: {exc}") from None
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise SystemExit(f"error: {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


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
        print(f"wrote {args.dot}")
    if args.json:
        graph.to_json(args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_zoo(args) -> int:
    import fxsparse
    from . import zoo

    rows, failures = [], 0
    for name in zoo.list():
        info = zoo.info(name)
        shape = args.input or (2,) + tuple(info.default_input)
        model = zoo.create(name, in_chans=shape[1]).eval()
        x = torch.randn(*shape)
        params = sum(p.numel() for p in model.parameters())
        row = [name, info.family, f"{params / 1e6:.2f}M"]
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
        rows.append(row)
    headers = ["model", "family", "params", "MFLOPs/sample", "prunable groups", "prunable channels"]
    if args.check:
        headers.append("analyze+export")
    print(tabulate(rows, headers=headers))
    if args.check:
        print(f"\n{len(rows) - failures}/{len(rows)} pass")
    return 1 if failures else 0


def _check(model, graph, x) -> str:
    import fxsparse
    from fxsparse.reference import masked_reference

    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(0))
    small = fxsparse.export(model, graph, keep).eval()
    out = small(x)
    ref = masked_reference(graph, keep, x)
    err = float((out - ref).abs().max())
    out.sum().backward()
    if err > 1e-4 * max(1.0, float(ref.abs().max())):
        return f"FAIL: export differs from masked reference by {err:.2e}"
    return "pass"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fxsparse", description="Channel-level sparse training that is fast for real.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("analyze", help="find the channel groups of a model and print them")
    p.add_argument("model", help="zoo:NAME or module.path:factory")
    p.add_argument("--input", type=parse_input, default=(1, 3, 32, 32), help="example input shape, e.g. 2x3x32x32")
    p.add_argument("--dot", help="write the group graph as Graphviz DOT")
    p.add_argument("--json", help="write the groups as JSON")
    p.set_defaults(func=cmd_analyze)
    z = sub.add_parser("zoo", help="list the model zoo (params, FLOPs, prunable groups)")
    z.add_argument("--input", type=parse_input, default=None, help="input shape for every model (default: each model's own)")
    z.add_argument("--check", action="store_true", help="also export at keep 0.5 and compare with the masked reference")
    z.set_defaults(func=cmd_zoo)
    b = sub.add_parser("bench", help="training-step time: dense vs masked-dense vs sparse vs exported", add_help=False)
    b.set_defaults(func=None)
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "bench":
        from .bench import main as bench_main

        bench_main(argv[1:])
        return 0
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
