"""Where the dynamic step's extra time with Bernoulli masks goes: counts that change every step.

    python benchmarks/shape_variation.py [--model vgg11_bn] [--threads 2] [--steps 12] [--warmup 40]

One dynamic-capacity SparseModel (compiled; ``--no-compile`` for eager), timed round-robin
with masks of three kinds: ``exact-random`` (round(keep * size) channels per group, a new
random choice every step: the shapes never change), ``bernoulli-fixed`` (one Bernoulli(keep)
mask, repeated: odd counts, fixed shapes) and ``bernoulli-fresh`` (a new Bernoulli mask every
step: the shapes change every step); then ``bernoulli-fresh`` again on a model whose counts
are rounded up to multiples of ``--align`` (few distinct shapes, a little padding). Medians
of ``--steps`` rounds after ``--warmup`` steps of each.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

import fxsparse
from fxsparse import zoo


def build(name, x, compile_, align):
    torch.manual_seed(0)
    model = zoo.create(name).train()
    sp = fxsparse.compile(model, x, keep=0.5, compile=compile_, align=align, capacity="dynamic")
    step = sp.make_train_step(F.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    return sp, step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg11_bn")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--align", type=int, default=16)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    sp, step = build(args.model, x, not args.no_compile, 1)
    rounded, rounded_step = build(args.model, x, not args.no_compile, args.align)
    fixed = sp.sample_masks(0.5)
    kinds = {
        "exact-random": (sp, step, lambda: fxsparse.random_keep(sp.channel_graph, 0.5, sp.generator)),
        "bernoulli-fixed": (sp, step, lambda: fixed),
        "bernoulli-fresh": (sp, step, lambda: sp.sample_masks(0.5)),
        f"bernoulli-fresh, counts rounded up to {args.align}": (rounded, rounded_step, lambda: rounded.sample_masks(0.5)),
    }
    for model, fn, masks in kinds.values():
        for _ in range(args.warmup):
            model.masks = masks()
            fn(x, y)
    times = {k: [] for k in kinds}
    order = list(kinds)
    for r in range(args.steps):
        for k in (order if r % 2 == 0 else order[::-1]):
            model, fn, masks = kinds[k]
            model.masks = masks()
            t = time.perf_counter()
            fn(x, y)
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times["exact-random"])
    print(f"{args.model}, batch 64, keep 0.5, {args.threads} threads, "
          f"{'eager' if args.no_compile else 'compiled'}, median of {args.steps} rounds after {args.warmup} warm-up steps")
    for k, v in times.items():
        print(f"  {k:45s} {statistics.median(v) * 1e3:7.1f} ms  {statistics.median(v) / base:5.2f}x")
    print(f"  compilations: {sp.compilations} and {rounded.compilations}")


if __name__ == "__main__":
    main()
