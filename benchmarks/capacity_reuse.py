"""How many capacity changes of a structure search come back to a capacity set seen before
(and so reuse its kept build instead of recompiling), side by side for kept-build cache
sizes. The search is simulated on the static-capacity path: keep probabilities start at
``--keep`` and drift, each channel towards its own random target (0 or 1) with noise, as
scores that sharpen do; every step ``fit_capacity`` re-plans and a mask is drawn. Eager
(no compile): what is counted is the capacity sets that would each compile 3 graphs.

    python benchmarks/capacity_reuse.py [--model mobilenetv2] [--steps 1000] [--seeds 3]
"""
import argparse
import warnings

import torch

import fxsparse
from fxsparse import zoo


def run(model_name, steps, seed, cache_size, keep):
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

    def count(s):
        nonlocal changes, reused
        changes += 1
        reused += s.reused_build

    sp.on_rebuild.append(count)
    for t in range(steps):
        for g in groups:  # sharpen towards the target, with noise that fades
            p = probs[g.id] + 0.01 * (target[g.id] - probs[g.id]) + 0.02 * (1 - t / steps) * torch.randn(g.size, generator=gen)
            probs[g.id] = p.clamp(0.01, 0.99)
        sp.fit_capacity(probs)
        sp.sample_masks(probs, generator=gen)
    return changes, reused


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mobilenetv2")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--cache-sizes", type=int, nargs="+", default=[1, 4])
    args = ap.parse_args()
    for size in args.cache_sizes:
        rows = [run(args.model, args.steps, s, size, args.keep) for s in range(args.seeds)]
        compiled = [1 + c - r for c, r in rows]
        print(f"{args.model} build_cache_size={size}: capacity changes {[c for c, _ in rows]}, "
              f"reused {[r for _, r in rows]}, capacity sets compiled (incl. the first) {compiled}", flush=True)


if __name__ == "__main__":
    main()
