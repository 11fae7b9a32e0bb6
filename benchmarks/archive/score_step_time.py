"""The structure search's score forwards against the weight step, compiled, side by side.

    python benchmarks/archive/score_step_time.py [--model zoo:vgg11_bn] [--batch 128] [--steps 20]

In one process, on one model and one set of capacities, per round (rounds interleave the
variants, so drift hits all alike), median ms over ``--steps`` rounds:

* ``train step``: the compiled sparse training step (gather, forward, backward, update);
* ``score graph K=1`` / ``K=2``: :meth:`fxsparse.SparseModel.losses` with 1 or 2 masks, one
  compiled graph (K=2 with the weight step's loss reused needs 1 forward; 2 fresh ones: 2);
* ``2 separate K=1 calls``: the same two forwards as two calls of the one-mask graph;
* ``2 module forwards``: what the score step ran before: ``sp(x)`` twice under no_grad
  (the dense-gradient forward path, with its running-statistics write-back), buffers
  cloned before and restored after.
"""
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bench_args, one folder up
import bench_args  # noqa: E402
import fxsparse  # noqa: E402
from fxsparse.zoo import load_model  # noqa: E402


def main(argv=None):
    p = bench_args.parser(__doc__, model="zoo:vgg11_bn", keep=0.5, batch=128, steps=20)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    bench_args.start(args)
    model = load_model(args.model, num_classes=10, in_chans=1)
    x, y = torch.randn(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))
    sp = fxsparse.compile(model, (x[:2],), keep=args.keep, capacity="exact")
    sp.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = sp.make_train_step(F.cross_entropy, opt)
    gen = torch.Generator().manual_seed(1)

    def exact_mask():  # fixed counts: every mask fits the exact capacities, no rebuild
        return {g.id: torch.randperm(g.size, generator=gen) < round(args.keep * g.size)
                for g in sp.channel_graph.prunable_groups}

    def module_forwards():
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        with torch.no_grad():
            out = []
            for _ in range(2):
                sp.masks = exact_mask()
                out.append(F.cross_entropy(sp(x), y))
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
        return out

    variants = {
        "train step": lambda: (setattr(sp, "masks", exact_mask()), step(x, y)),
        "score graph K=1": lambda: sp.losses(F.cross_entropy, [exact_mask()], x, y),
        "score graph K=2": lambda: sp.losses(F.cross_entropy, [exact_mask(), exact_mask()], x, y),
        "2 separate K=1 calls": lambda: [sp.losses(F.cross_entropy, [exact_mask()], x, y) for _ in range(2)],
        "2 module forwards": module_forwards,
    }
    t0 = time.perf_counter()
    for fn in variants.values():  # compile (cold) and warm up
        fn()
        fn()
    print(f"compiled in {time.perf_counter() - t0:.0f} s ({sp.compilations} graphs)", flush=True)
    times = {k: [] for k in variants}
    for _ in range(args.steps):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - t))
    train = statistics.median(times["train step"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        q = statistics.quantiles(ts, n=4)
        rows.append({"variant": name, "median_ms": med, "q1_ms": q[0], "q3_ms": q[2], "vs_train_step": med / train})
        print(f"{name:24s} {med:8.1f} ms  (quartiles {q[0]:.1f}-{q[2]:.1f})  {med / train:.2f}x the train step")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "torch": torch.__version__, "graphs": sp.compilations, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
