"""How much of one VR-PGE estimate is signal, per channel and per layer (width), at
trained weights with open (unpolarised) scores.

    python benchmarks/score_snr.py --granularity channel --json benchmarks/score_snr_vgg11_channel.json
    python benchmarks/score_snr.py --granularity width --json benchmarks/score_snr_vgg11_width.json

On Fashion-MNIST (batch 128) the weights train for each number of steps in ``--at`` (SGD lr
0.05, momentum 0.9) under masks sampled from the *initial* policy (the scores stay at their
starting, budget-meeting values: open, nothing polarised), then ``--estimates`` independent
estimates (2 fresh samples on a fresh minibatch each, at those weights) are drawn.
``fxsparse.methods.vrpge.signal_to_noise`` splits them in halves (E[a_j b_j] = mu_j^2) to separate
the true gradient from the noise. Every figure comes with the estimator's detection floor:
the signal RMS that M estimates over n coordinates can tell from zero (2 standard errors of
the split-half product; about sqrt(2 / (M sqrt(n))) times the noise). A signal below its
floor is not a measurement of the signal; ``steps`` = 1 / snr^2 estimates must be averaged
before their mean points along the gradient.

Rows: per channel (the paper's parameters), per group for the channel policy (the sum of a
group's channel estimates: the gradient of a shared keep ratio under random channel
subsets), and with ``--granularity width`` the width policy's own per-group estimates
(ordered channel subsets, the default search). Each also without its component along the budget's cost
gradient ("budget-neutral part"): when the budget binds, the projection cancels that
component, so the rest is all the search can learn about the allocation. ``--perturb
group``: the second sample redraws one group of the first (local perturbation). Eager;
~1-3 min per point on 2 cores.
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from tabulate import tabulate

import bench_args
import fxsparse
from fxsparse.zoo import load_model
from fxsparse.training.data import make_loaders
from fxsparse.methods.vrpge import StructureLearner
from fxsparse.methods.vrpge import signal_to_noise
from fxsparse.methods.vrpge.experimental import ExperimentSwitches


def batches(loader):
    while True:
        yield from loader


def estimates(learner, data, count):
    """``count`` estimates of the learner's parameters, each from 2 fresh samples on a fresh minibatch."""
    out = []
    for _ in range(count):
        losses, draws = learner.sample_losses(F.cross_entropy, *next(data), k=2)
        out.append(learner.gradient(losses, draws))
    return torch.stack(out)


def described(r, n):
    """signal / floor / noise, snr bound, steps; flags a signal below its floor."""
    below = r["signal"] <= r["signal_floor"]
    return [f"{r['signal']:.3g}{' (below floor)' if below else ''} / {r['signal_floor']:.2g} / {r['noise']:.3g}",
            f"{'<= ' if below else ''}{r['snr_upper'] if below else r['snr']:.3f}",
            f"{'>= ' if below else ''}{r['min_steps'] if below else r['steps_to_resolve']:,.0f}", n]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="zoo:vgg11_bn")
    p.add_argument("--keep", type=float, default=0.08)
    p.add_argument("--budget", choices=["channels", "flops"], default="flops")
    p.add_argument("--granularity", choices=["channel", "width"], default="width")
    p.add_argument("--perturb", choices=["all", "group"], default="all",
                   help="second sample: an independent draw (all) or the first with one group redrawn (group)")
    p.add_argument("--at", type=int, nargs="+", default=[0, 117, 468], help="weight-training steps before measuring")
    p.add_argument("--estimates", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    bench_args.start(args, args.seed)
    train, _, info = make_loaders("fashion-mnist", batch_size=args.batch_size, seed=args.seed, drop_last=True)
    model = load_model(args.model, num_classes=info["num_classes"], in_chans=info["in_chans"]).train()
    data = batches(train)
    x0, _ = next(data)
    sp = fxsparse.compile(model, (x0[:2],), keep=args.keep, compile=False, seed=args.seed)
    sp.train()
    learner = StructureLearner(sp, keep=args.keep, budget=args.budget, lr=0.0, seed=args.seed, granularity=args.granularity,
                               experimental=ExperimentSwitches(perturb=args.perturb))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    step = sp.make_train_step(F.cross_entropy, opt)
    sizes, M = learner.sizes, args.estimates
    rows, done, results = [], 0, []
    for at in sorted(args.at):
        for _ in range(at - done):  # weights only: the scores stay where they started
            learner.weight_step(step, *next(data))
        done = at
        t = time.perf_counter()
        est = estimates(learner, data, M)
        u = learner.budget_direction()
        tangent = est - (est @ u).unsqueeze(1) * u  # what the budget projection leaves: the allocation
        point = {"steps": at, "seconds": None}
        name = f"{args.granularity} policy{', one group perturbed' if args.perturb == 'group' else ''}"
        if args.granularity == "channel":
            point["channel"] = signal_to_noise(est)
            point["channel_tangent"] = signal_to_noise(tangent)
            point["group"] = signal_to_noise(torch.stack([part.sum(1) for part in torch.split(est, sizes, dim=1)], 1))
            rows.append([at, f"{name}, per channel", *described(point["channel"], sum(sizes))])
            rows.append([at, f"{name}, per channel, budget-neutral part", *described(point["channel_tangent"], sum(sizes))])
            rows.append([at, f"{name}, per group (sum)", *described(point["group"], len(sizes))])
        else:
            point["width"] = signal_to_noise(est)
            point["width_tangent"] = signal_to_noise(tangent)
            rows.append([at, f"{name}, per group", *described(point["width"], len(sizes))])
            rows.append([at, f"{name}, per group, budget-neutral part", *described(point["width_tangent"], len(sizes))])
        point["seconds"] = time.perf_counter() - t
        point["floor_formula"] = {k: math.sqrt(2 / (M * math.sqrt(n))) for k, n in
                                  (("channel", sum(sizes)), ("group", len(sizes)))}
        results.append(point)
        print(tabulate(rows, headers=["weight steps", "estimate", "signal (RMS) / floor / noise", "snr (one estimate)",
                                      "estimates to resolve", "coordinates"]), flush=True)
    print(f"{args.model}, {args.budget} budget {args.keep}, {sum(sizes)} channels in {len(sizes)} groups, "
          f"{M} estimates per point; scores open (at their initial values)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "torch": torch.__version__, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
