"""What inductor's channels-last layout choice costs or saves: the exported (physically
smaller) model's compiled forward + backward + SGD step with ``layout_optimization`` on
(inductor's default: convolutions and the tensors around them NHWC) and off (NCHW, oneDNN's
blocked kernels with a reorder in and out), timed round-robin in one process.

    python benchmarks/archive/conv_layout.py [--models vgg11_bn resnet18_cifar] [--steps 12] [--threads 2]

The dynamic sparse step's opaque convolutions follow inductor's choice (channels-last), so
this is also what that choice costs them.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F

import fxsparse
from fxsparse import zoo


def compiled_steps(name, x, y):
    """{channels-last (layout_optimization on): a step function} for the exported model."""
    graph = fxsparse.analyze(zoo.create(name), x)
    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(1))
    steps = {}
    for channels_last in (True, False):
        torch.manual_seed(0)
        small = fxsparse.export(zoo.create(name), graph, keep).train()
        opt = torch.optim.SGD(small.parameters(), lr=0.01, momentum=0.9)

        def forward_backward(small=small):
            loss = F.cross_entropy(small(x), y)
            loss.backward()
            return loss

        with inductor_config.patch(layout_optimization=channels_last):
            fn = torch.compile(forward_backward)
            for _ in range(3):  # compiles in the first
                fn()

        def step(fn=fn, opt=opt):
            fn()
            opt.step()
            opt.zero_grad(set_to_none=True)

        steps[channels_last] = step
    return steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vgg11_bn", "resnet18_cifar"])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    for name in args.models:
        x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
        steps = compiled_steps(name, x, y)
        times = {k: [] for k in steps}
        for r in range(args.steps):
            for k in (True, False) if r % 2 == 0 else (False, True):
                t = time.perf_counter()
                steps[k]()
                times[k].append(time.perf_counter() - t)
        ratios = [b / a for a, b in zip(times[True], times[False])]
        print(f"{name}, exported at keep 0.5, batch 64, {args.threads} threads, median of {args.steps} rounds: "
              f"channels-last {statistics.median(times[True]) * 1e3:.1f} ms, "
              f"NCHW {statistics.median(times[False]) * 1e3:.1f} ms, "
              f"NCHW / channels-last per round {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
