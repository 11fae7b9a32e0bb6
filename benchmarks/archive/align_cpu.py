"""Capacity alignment on CPU: the sparse step of a zoo model with Bernoulli(keep) masks and
capacity "auto", slot counts rounded to multiples of each --aligns value, timed side by
side (order alternating per round, batch 64, 2 threads).

    python benchmarks/archive/align_cpu.py [--model vgg11_bn] [--aligns 1 16] [--steps 16]
"""
import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

import fxsparse
from fxsparse import zoo


def build(name, x, y, keep, align):
    torch.manual_seed(0)
    model = zoo.create(name).train()
    sp = fxsparse.compile(model, x, keep=keep, capacity="auto", align=align)
    sp.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    step = sp.make_train_step(F.cross_entropy, opt)

    def run():
        sp.sample_masks(keep)
        step(x, y)

    for _ in range(3):  # compile and warm up
        run()
    return sp, run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg11_bn")
    p.add_argument("--aligns", type=int, nargs="+", default=[1, 16])
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=16)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    variants = {a: build(args.model, x, y, args.keep, a) for a in args.aligns}
    times = {a: [] for a in variants}
    for r in range(args.steps):
        for a in (args.aligns if r % 2 == 0 else args.aligns[::-1]):
            t = time.perf_counter()
            variants[a][1]()
            times[a].append(time.perf_counter() - t)
    for a, (sp, _) in variants.items():
        caps = [c for c, prunable in zip(sp.plan.caps, sp.plan.prunable) if prunable]
        print(f"align {a:3d}: {statistics.median(times[a]) * 1e3:7.1f} ms per step, capacities {caps}, "
              f"compilations {sp.compilations}")


if __name__ == "__main__":
    main()
