"""Where the time of one compiled sparse training step goes, phase by phase.

    python benchmarks/step_phases.py [--model vgg11_bn] [--batch 64] [--keep 0.5] [--steps 12]
                                     [--capacity exact|dynamic]

Runs ``SparseModel.make_train_step``'s step (SGD momentum 0.9, weight decay 5e-4, random
masks of exactly round(keep x size) channels per group; static capacities, or the default
dynamic ones with ``--capacity dynamic``) with its ``on_phase`` hook, and prints the median
milliseconds of each phase: setting the masks, the per-step gather indices, the gather of
kept weights, the compiled forward, the backward, the compact update (arguments + compiled
kernel), and the write-back of BN statistics. Next to them, timed
in the same rounds, the same phases of the exported model for one such mask (compiled
forward, backward, torch.optim.SGD), and whole steps of both (the real
``make_train_step``): per-round ratios, which the machine's drift does not move.
"""
import statistics
import time

import torch
import torch.nn.functional as F
from tabulate import tabulate

import bench_args
import fxsparse
from fxsparse import zoo
from fxsparse.bench import quartiles
from fxsparse.step.train_step import PHASES


def main(argv=None):
    parser = bench_args.parser(__doc__, model="vgg11_bn", keep=0.5, batch=64, steps=12)
    parser.add_argument("--capacity", choices=["exact", "dynamic"], default="exact")
    args = parser.parse_args(argv)
    bench_args.start(args)
    model = zoo.create(args.model).train()
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    sp = fxsparse.compile(model, x, keep=args.keep, capacity=args.capacity)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    step = sp.make_train_step(F.cross_entropy, opt)
    sp.train()

    def new_masks():
        sp.masks = fxsparse.random_keep(sp.channel_graph, args.keep, sp.generator)

    for _ in range(3):  # compile and warm up through the real step
        new_masks()
        step(x, y)

    torch.manual_seed(0)
    small = fxsparse.export(zoo.create(args.model), sp.channel_graph, sp.masks).train()
    small_opt = torch.optim.SGD(small.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    small_loss = torch.compile(lambda a, b: F.cross_entropy(small(a), b))

    def exported_step():
        small_opt.zero_grad(set_to_none=True)
        small_loss(x, y).backward()
        small_opt.step()

    for _ in range(3):
        exported_step()

    def sparse_phases():
        t = [time.perf_counter()]
        new_masks()
        t.append(time.perf_counter())
        step.on_phase = lambda phase: t.append(time.perf_counter())
        step(x, y)
        step.on_phase = None
        return dict(zip(SPARSE_PHASES, (b - a for a, b in zip(t, t[1:]))))

    def exported_phases():
        t = [time.perf_counter()]
        small_opt.zero_grad(set_to_none=True)
        loss = small_loss(x, y)
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        small_opt.step()
        t.append(time.perf_counter())
        return dict(zip(("forward", "backward", "update"), (b - a for a, b in zip(t, t[1:]))))

    def whole(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    sparse, exported, ratios = {k: [] for k in SPARSE_PHASES}, {k: [] for k in ("forward", "backward", "update")}, []
    for r in range(args.steps):
        for k, v in sparse_phases().items():
            sparse[k].append(v)
        for k, v in exported_phases().items():
            exported[k].append(v)
        pair = [lambda: whole(lambda: (new_masks(), step(x, y))), lambda: whole(exported_step)]
        a, b = (pair[0](), pair[1]()) if r % 2 == 0 else tuple(reversed((pair[1](), pair[0]())))
        ratios.append(a / b)
    med = lambda v: statistics.median(v) * 1e3
    rows = [[k, f"{med(v):.2f}", f"{med(exported[k]):.2f}" if k in exported else ""] for k, v in sparse.items()]
    rows.append(["sum of phases", f"{sum(med(v) for v in sparse.values()):.2f}", f"{sum(med(v) for v in exported.values()):.2f}"])
    q1, mid, q3 = quartiles(ratios)
    print(f"{args.model}, batch {args.batch}, keep {args.keep}, {args.capacity} capacities: median ms per phase "
          f"over {args.steps} rounds")
    print(tabulate(rows, headers=["phase", "sparse compiled", "exported compiled"]))
    print(f"whole steps, sparse / exported per round: median {mid:.3f}x (quartiles {q1:.3f}-{q3:.3f})")


SPARSE_PHASES = ("masks",) + PHASES


if __name__ == "__main__":
    main()
