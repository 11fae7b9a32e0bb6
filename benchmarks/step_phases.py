"""Where the time of one compiled sparse training step goes, phase by phase.

    python benchmarks/step_phases.py [--model vgg11_bn] [--batch 64] [--keep 0.5] [--steps 12]

Runs the pieces of ``SparseModel.make_train_step`` one at a time (SGD momentum 0.9,
weight decay 5e-4, random masks of exactly round(keep x size) channels per group) and
prints the median milliseconds of each: setting the masks, the per-step gather indices,
the gather of kept weights, the compiled forward, the backward, the compact update
(arguments + compiled kernel), and the write-back of BN statistics.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import fxsparse
from fxsparse import zoo
from fxsparse.train_step import gather_leaves, write_back_buffers


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg11_bn")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = zoo.create(args.model).train()
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    sp = fxsparse.compile(model, x, keep=args.keep, capacity="exact")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    step = sp.make_train_step(F.cross_entropy, opt)
    sp.train()
    for _ in range(3):  # compile and warm up through the real step
        sp.masks = fxsparse.random_keep(sp.channel_graph, args.keep, sp.generator)
        step(x, y)
    _, forward_loss, kernel, gather_fn = sp._compiled["step"]
    update = fxsparse.optim.compact_update_for(opt)
    params = dict(model.named_parameters())
    times = {k: [] for k in ("masks", "indices", "gather", "forward", "backward", "update", "write-back", "total")}
    for _ in range(args.steps):
        t = [time.perf_counter()]
        sp.masks = fxsparse.random_keep(sp.channel_graph, args.keep, sp.generator)
        t.append(time.perf_counter())
        plan = sp.step_inputs()
        t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        gathered, slots, weights = gather_leaves(sp, plan, gather_fn)
        t.append(time.perf_counter())
        loss = forward_loss(gathered, plan, y, x)
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        arguments, _ = update.arguments(opt, [(params[n], gathered[n], weights[n], slots[n]) for n in slots if n in params])
        with torch.no_grad():
            kernel(*arguments)
        t.append(time.perf_counter())
        write_back_buffers(sp, gathered, plan, slots=slots)
        t.append(time.perf_counter())
        for k, a, b in zip(times, t, t[1:]):
            times[k].append(b - a)
        times["total"].append(t[-1] - t[0])
    print(f"{args.model}, batch {args.batch}, keep {args.keep}: median ms per phase over {args.steps} steps")
    for k, v in times.items():
        print(f"  {k:<11} {statistics.median(v) * 1e3:7.2f}")


if __name__ == "__main__":
    main()
