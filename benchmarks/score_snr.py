"""How many search steps VR-PGE needs before its score updates follow signal, not noise.

    python benchmarks/score_snr.py [--model zoo:vgg11_bn] [--keep 0.5] [--at 0 117 468] [--estimates 256]

On Fashion-MNIST (batch 128), the search of ``fxsparse train`` is run for each number of
steps in ``--at`` (weights: SGD lr 0.05 momentum 0.9 on the sampled sub-network; scores:
VR-PGE with Adam, lr 0.1, reusing the weight step's loss), then weights and scores are
frozen and ``--estimates`` independent VR-PGE estimates (2 fresh masks on a fresh minibatch
each, the exact Bernoulli score) are drawn. ``fxsparse.vrpge.signal_to_noise`` splits them
in halves to separate the true gradient from the noise: ``snr`` is per single estimate (an
upper bound: a signal below the detection floor counts as the floor) and ``steps`` =
1 / snr^2 is how many estimates must be averaged before their mean points along the
gradient (a lower bound; Adam's momentum averages ~10). Printed per channel (what the method
learns) and per group (the gradient of a group's mean keep ratio: the per-layer allocation).
Eager execution; ~2 min per point on a 2-core CPU at the defaults.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from tabulate import tabulate

import fxsparse
from fxsparse.cli import load_model
from fxsparse.data import make_loaders
from fxsparse.structure import StructureLearner
from fxsparse.vrpge import signal_to_noise, vrpge_gradient


def batches(loader):
    while True:
        yield from loader


def estimates(learner, data, count):
    """``count`` VR-PGE estimates, each from 2 fresh masks on a fresh minibatch."""
    out = []
    for _ in range(count):
        losses, masks = learner.sample_losses(F.cross_entropy, *next(data), k=2)
        out.append(vrpge_gradient(losses.double(), masks.double(), learner.scores.detach().double()))
    return torch.stack(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="zoo:vgg11_bn")
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--budget", choices=["channels", "flops"], default="channels")
    p.add_argument("--at", type=int, nargs="+", default=[0, 117, 468], help="search steps before measuring")
    p.add_argument("--estimates", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--score-lr", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train, _, info = make_loaders("fashion-mnist", batch_size=args.batch_size, seed=args.seed, drop_last=True)
    model = load_model(args.model, num_classes=info["num_classes"], in_chans=info["in_chans"]).train()
    data = batches(train)
    x0, _ = next(data)
    sp = fxsparse.compile(model, (x0[:2],), keep=args.keep, compile=False, seed=args.seed)
    sp.train()
    learner = StructureLearner(sp, keep=args.keep, budget=args.budget, lr=args.score_lr, seed=args.seed)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    step = sp.make_train_step(F.cross_entropy, opt)
    sizes = learner.sizes
    rows, done, results = [], 0, []
    for at in sorted(args.at):
        for _ in range(at - done):
            x, y = next(data)
            loss, mask = learner.weight_step(step, x, y)
            learner.score_step(F.cross_entropy, x, y, first=(loss, mask))
        done = at
        t = time.perf_counter()
        est = estimates(learner, data, args.estimates)
        per_channel = signal_to_noise(est)
        per_group = signal_to_noise(torch.stack([part.sum(1) for part in torch.split(est, sizes, dim=1)], 1))
        s = learner.scores.detach()
        polar = float(((s < 0.05) | (s > 0.95)).double().mean())
        results.append({"steps": at, "channel": per_channel, "group": per_group, "polarised": polar,
                        "seconds": time.perf_counter() - t})
        rows.append([at, f"{polar:.2f}"] + [v for r in (per_channel, per_group) for v in (
            f"{r['signal']:.3g} / {r['signal_floor']:.2g} / {r['noise']:.3g}", f"<= {r['snr_upper']:.3f}",
            f">= {r['min_steps']:,.0f}")])
        print(tabulate(rows, headers=["search steps", "scores at 0/1", "channel signal / floor / noise", "channel snr",
                                      "channel steps", "group signal / floor / noise", "group snr", "group steps"]),
              flush=True)
    print(f"{sum(sizes)} channels in {len(sizes)} groups, {args.estimates} estimates per point")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
