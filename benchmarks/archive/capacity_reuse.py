"""How often a structure search on static capacities changes them (each change a recompile
of 3 graphs, unless the capacity set comes back and its kept build is reused), side by side
for capacity policies, with the padding each leaves (capacity-model FLOPs over the kept
sub-network's, mean over the last 10 % of the steps) and the simulated search time in
unpadded steps (step time taken as proportional to FLOPs, a compile priced at 200 steps).

Policies: ``fit_capacity``'s defaults (a shrink must cut the capacity model's FLOPs by
``shrink_gain`` 0.1), a higher ``shrink_gain`` (0.25), and shrinks priced at their
recompile (``remaining_steps`` given, as the VR-PGE learner does: a shrink must cut the
FLOPs by ``recompile_steps`` / steps left). The search is simulated (eager, every step
counted as compiled so that the policies act as in a compiled run): keep probabilities start
at ``--keep`` and drift, each channel towards its own random target (0 or 1) with noise,
as scores that sharpen do; every step ``fit_capacity`` re-plans and a mask is drawn.
Every zoo model gets dynamic capacities by default; this forces static ones
(``capacity="auto"``), which a model whose computation pins a channel count still gets.

    python benchmarks/archive/capacity_reuse.py [--model shufflenetv2] [--steps 1000] [--seeds 3]
"""
import argparse
import warnings

import torch

import fxsparse
from fxsparse import zoo
from fxsparse.analysis.flops import SubnetFlops

RECOMPILE_STEPS = 200.0  # a capacity set's compile, in steps (see fit_capacity's recompile_steps)
POLICIES = {"default (shrink_gain 0.1)": {}, "shrink_gain 0.25": {"shrink_gain": 0.25},
            "shrinks priced at 200 steps": {"recompile_steps": RECOMPILE_STEPS}}


def run(model_name, steps, seed, keep, policy):
    torch.manual_seed(seed)
    model = zoo.create(model_name)
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp = fxsparse.compile(model, x, keep=keep, compile=False, capacity="auto")
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
        s.compiled_fns["simulated"] = None  # a compiled run's step compiles right after a change

    sp.on_rebuild.append(count)
    sp.compiled_fns["simulated"] = None
    options = dict(policy)
    for t in range(steps):
        for g in groups:  # sharpen towards the target, with noise that fades
            p = probs[g.id] + 0.01 * (target[g.id] - probs[g.id]) + 0.02 * (1 - t / steps) * torch.randn(g.size, generator=gen)
            probs[g.id] = p.clamp(0.01, 0.99)
        if "recompile_steps" in policy:
            options["remaining_steps"] = steps - t
        sp.fit_capacity(probs, **options)
        masks = sp.sample_masks(probs, generator=gen)
        padding.append(float(flops(flops.flat(sp.plan.cap_keep()))) / float(flops(flops.flat(masks))))
    late = padding[steps - steps // 10:]
    # the search's time in unpadded steps (step time taken as proportional to FLOPs), with
    # each compiled capacity set priced at RECOMPILE_STEPS steps
    total = sum(padding) + (1 + changes - reused) * RECOMPILE_STEPS
    return changes, reused, sum(late) / len(late), total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shufflenetv2")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--keep", type=float, default=0.5)
    args = ap.parse_args()
    for name, policy in POLICIES.items():
        rows = [run(args.model, args.steps, s, args.keep, policy) for s in range(args.seeds)]
        print(f"{args.model}, {name}: capacity changes {[r[0] for r in rows]}, reused {[r[1] for r in rows]}, "
              f"capacity sets compiled (incl. the first) {[1 + r[0] - r[1] for r in rows]}, padding (capacity / "
              f"kept FLOPs, last 10 %) {[round(r[2], 3) for r in rows]}, search time in unpadded steps (a compile = "
              f"{RECOMPILE_STEPS:g} steps) {[round(r[3]) for r in rows]}", flush=True)


if __name__ == "__main__":
    main()
