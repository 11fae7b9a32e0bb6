"""Where the dynamic step's extra time with Bernoulli masks goes: counts that change every
step, and counts that are not multiples of the convolution's channel block.

    python benchmarks/archive/shape_variation.py [--model vgg11_bn] [--threads 2] [--steps 12] [--warmup 40]
                                         [--align 16] [--no-compile]

Two dynamic-capacity SparseModels (compiled; ``--no-compile`` for eager), one running every
mask at its exact counts (align 1), one at counts rounded up to ``--align``, timed
round-robin with masks of five kinds:
  exact-random: round(keep * size) channels per group, a new random choice every step (the
    shapes never change; at keep 0.5 the zoo's widths give multiples of 16);
  bernoulli-fixed: one Bernoulli(keep) mask, repeated (odd counts, fixed shapes);
  bernoulli-fresh: a new Bernoulli mask every step (the shapes change every step);
  and the last two again with the counts rounded up to ``--align`` (few distinct shapes).
Medians of ``--steps`` rounds after ``--warmup`` steps of each. Next to each time: the
forward FLOPs of the counts the step runs at, relative to exact-random's, and of those
counts rounded up to the block oneDNN's convolutions compute in on this CPU
(``cpu_channel_block()``, 16 with AVX-512: a count of 33 costs as much as 48 there), both
averaged over the masks timed. ``--align`` defaults to that block too.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

import fxsparse
from fxsparse import zoo
from fxsparse.analysis.flops import SubnetFlops
from fxsparse.step.capacity import cpu_channel_block


def build(name, x, compile_, align):
    torch.manual_seed(0)
    model = zoo.create(name).train()
    sp = fxsparse.compile(model, x, keep=0.5, compile=compile_, align=align, capacity="dynamic")
    step = sp.make_train_step(F.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    return sp, step


def rounded_flops(flops, graph, masks, align):
    """FLOPs of the sub-network whose every group keeps its count rounded up to ``align``."""
    keep = []
    for g in graph.prunable_groups:
        n = min(g.size, math.ceil(int(masks[g.id].sum()) / align) * align)
        keep.append(torch.arange(g.size) < n)
    return float(flops(torch.cat(keep)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg11_bn")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--align", type=int, default=cpu_channel_block())
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    sp, step = build(args.model, x, not args.no_compile, 1)
    rounded, rounded_step = build(args.model, x, not args.no_compile, args.align)
    fixed, fixed_rounded = sp.sample_masks(0.5), rounded.sample_masks(0.5)
    a = args.align
    kinds = {  # label: (model, step, new masks, align the step runs at)
        "exact-random": (sp, step, lambda: fxsparse.random_keep(sp.channel_graph, 0.5, sp.generator), 1),
        "bernoulli-fixed": (sp, step, lambda: fixed, 1),
        "bernoulli-fresh": (sp, step, lambda: sp.sample_masks(0.5), 1),
        f"bernoulli-fixed, counts rounded up to {a}": (rounded, rounded_step, lambda: fixed_rounded, a),
        f"bernoulli-fresh, counts rounded up to {a}": (rounded, rounded_step, lambda: rounded.sample_masks(0.5), a),
    }
    for model, fn, masks, _ in kinds.values():
        for _ in range(args.warmup):
            model.masks = masks()
            fn(x, y)
    flops, block = SubnetFlops(sp.channel_graph), cpu_channel_block()
    times = {k: [] for k in kinds}
    run_flops = {k: [] for k in kinds}
    block_flops = {k: [] for k in kinds}
    order = list(kinds)
    for r in range(args.steps):
        for k in (order if r % 2 == 0 else order[::-1]):
            model, fn, masks, align = kinds[k]
            model.masks = m = masks()
            t = time.perf_counter()
            fn(x, y)
            times[k].append(time.perf_counter() - t)
            run_flops[k].append(rounded_flops(flops, sp.channel_graph, m, align))
            block_flops[k].append(rounded_flops(flops, sp.channel_graph, m, max(align, block)))
    base = statistics.median(times["exact-random"])
    base_flops = statistics.mean(run_flops["exact-random"])
    print(f"{args.model}, batch 64, keep 0.5, {args.threads} threads, "
          f"{'eager' if args.no_compile else 'compiled'}, median of {args.steps} rounds after {args.warmup} warm-up steps")
    print(f"  {'masks':45s} {'step':>9s} {'ratio':>6s}   FLOPs ratio: run counts, in blocks of {block}")
    for k, v in times.items():
        print(f"  {k:45s} {statistics.median(v) * 1e3:6.1f} ms  {statistics.median(v) / base:5.2f}x"
              f"   {statistics.mean(run_flops[k]) / base_flops:5.2f}x  {statistics.mean(block_flops[k]) / base_flops:5.2f}x")
    print(f"  compilations: {sp.compilations} and {rounded.compilations}")


if __name__ == "__main__":
    main()
