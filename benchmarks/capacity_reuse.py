"""How many capacity changes of a structure search come back to a capacity set seen before
(and so reuse its kept build instead of recompiling), side by side for kept-build cache
sizes and for shrink thresholds (``fit_capacity``'s ``shrink_gain``: a shrink must cut the
capacity model's FLOPs by that share), with the padding each leaves (capacity-model FLOPs
over the kept sub-network's, mean over the last 10 % of the steps). The search is
simulated on the static-capacity path (ShuffleNetV2 keeps static capacities by default;
other models are forced onto it): keep probabilities start at
``--keep`` and drift, each channel towards its own random target (0 or 1) with noise, as
scores that sharpen do; every step ``fit_capacity`` re-plans and a mask is drawn. Eager
(no compile): what is counted is the capacity sets that would each compile 3 graphs.

    python benchmarks/capacity_reuse.py [--model shufflenetv2] [--steps 1000] [--seeds 3]
        [--cache-sizes 1 4] [--shrink-gains 0.1 0.25]
"""
import argparse
import warnings

import torch

import fxsparse
from fxsparse import zoo
from fxsparse.analysis.flops import SubnetFlops


def run(model_name, steps, seed, cache_size, keep, shrink_gain):
    torch.manual_seed(seed)
    model = zoo.create(model_name)
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp = fxsparse.compile(model, x, keep=keep, compile=False, capacity="auto")
    sp.build_cache_size = cache_size
    gen = torch.Generator().manual_seed(seed)
    groups = sp.channel_graph.prunable_groups
    probs = {g.id: torch.full((g.size,), keep) for g in groups}
    target = {g.id: (torch.rand(g.size, generator=gen) < keep).float() for g in groups}
    changes = reused = 0
    flops, padding = SubnetFlops(sp.channel_graph), []

    def count(s):
        nonlocal changes, reused
        changes += 1
        reused += s.reused_build

    sp.on_rebuild.append(count)
    for t in range(steps):
        for g in groups:  # sharpen towards the target, with noise that fades
            p = probs[g.id] + 0.01 * (target[g.id] - probs[g.id]) + 0.02 * (1 - t / steps) * torch.randn(g.size, generator=gen)
            probs[g.id] = p.clamp(0.01, 0.99)
        sp.fit_capacity(probs, shrink_gain=shrink_gain)
        masks = sp.sample_masks(probs, generator=gen)
        if t >= steps - steps // 10:
            padding.append(float(flops(flops.flat(sp.plan.cap_keep()))) / float(flops(flops.flat(masks))))
    return changes, reused, sum(padding) / len(padding)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shufflenetv2")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--cache-sizes", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--shrink-gains", type=float, nargs="+", default=[0.1, 0.25])
    args = ap.parse_args()
    for size in args.cache_sizes:
        for gain in args.shrink_gains:
            rows = [run(args.model, args.steps, s, size, args.keep, gain) for s in range(args.seeds)]
            compiled = [1 + c - r for c, r, _ in rows]
            print(f"{args.model} build_cache_size={size} shrink_gain={gain}: capacity changes "
                  f"{[c for c, _, _ in rows]}, reused {[r for _, r, _ in rows]}, capacity sets compiled (incl. the "
                  f"first) {compiled}, padding (capacity / kept FLOPs, last 10 %) "
                  f"{[round(p, 3) for _, _, p in rows]}", flush=True)


if __name__ == "__main__":
    main()
