"""Training-step time of dense vs sparse execution, measured side by side in one run.

    fxsparse bench [--models vgg11_bn resnet20] [--batch 64] [--keep 0.5] [--steps 10]
                   [--precision fp32 bf16] [--variants dense sparse exported ...] [--json out.json]
    (also: python benchmarks/step_time.py ...)

Variants (SGD momentum 0.9, cross-entropy, per-step random masks at the keep ratio):
  dense eager / dense compiled: the model as is;
  masked-dense eager / compiled: dense weights multiplied by the channel masks (what the
    authors' code and most pruning methods do: no saving);
  sparse eager / compiled: fxsparse.compile (capacity "exact": random masks keeping
    round(keep * size) channels per group, as the timing target asks);
  sparse compiled (Bernoulli): capacity "auto", masks drawn Bernoulli(keep) per channel;
  sparse dynamic (exact counts / Bernoulli masks): capacity "dynamic", one graph whose kept
    counts are symbolic sizes, run at each mask's counts rounded up to the default align
    (oneDNN's channel block on a CPU: 16 with AVX-512); "align 1": at the exact counts
    (every Bernoulli mask a new shape);
  exported eager / compiled: the physically smaller model for one fixed mask.
  dense / exported inference: one forward of the model in eval mode under
    torch.inference_mode() (eager), what deploying the small model instead of the dense one saves.
Time: every variant is built and warmed up (3 steps; compilation happens in the first, with
a fresh compile cache unless --warm-cache), then all are timed round-robin, one step of
each per round, the order reversed every other round (--block K: K steps in a row, the
step before them untimed), --steps rounds; the median per variant is reported, and for
the pairs in PAIRS (sparse / exported compiled, dynamic / static sparse, ...) the median
and quartiles of the per-round ratio, which the machine's drift between rounds does not move.
Precision: ``--precision bf16`` runs every variant's steps (and the memory count) under
``torch.autocast("cpu", torch.bfloat16)``, as ``fxsparse train --precision bf16`` does;
``--precision fp32 bf16`` measures both in one run, one after the other.
Memory: parameters + gradients + optimizer state + the activations autograd saves for the
backward (counted with torch.autograd.graph.saved_tensors_hooks on the eager step).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from tabulate import tabulate

import fxsparse
from fxsparse import zoo
from fxsparse.core.broadcast import along
from fxsparse.analysis.masks import check_fraction
from fxsparse.step.train_step import forward_gathered, gather_leaves
from fxsparse.training.device import Precision


def saved_bytes(fn):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def state_bytes(params, opt):
    n = sum(p.numel() * p.element_size() for p in params) * 2  # weights + grads
    for st in opt.state.values():
        n += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
    return n


def make_dense_step(model, x, y, compile_):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    fwd = torch.compile(lambda a, b: F.cross_entropy(model(a), b)) if compile_ else (lambda a, b: F.cross_entropy(model(a), b))

    def step():
        opt.zero_grad(set_to_none=True)
        fwd(x, y).backward()
        opt.step()

    return step, opt


def make_inference_step(model, x):
    """One forward in eval mode, no autograd: a deployed model's step."""
    model.eval()

    def step():
        with torch.inference_mode():
            model(x)

    return step


def make_masked_dense_step(model, graph, x, y, keep, compile_):
    """Dense compute with weights multiplied by per-step channel masks (no saving)."""
    from torch.func import functional_call

    params = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    members = [(m.param, m.dim, g) for g in graph.prunable_groups for m in g.members if m.param in params]
    gen = torch.Generator().manual_seed(0)

    def loss_fn(masks, a, b):
        tensors = dict(params)
        for name, dim, lines in masks:
            tensors[name] = tensors[name] * along(lines, dim, tensors[name].dim())
        return F.cross_entropy(functional_call(model, tensors, (a,)), b)

    fwd = torch.compile(loss_fn) if compile_ else loss_fn

    def step():
        keep_masks = fxsparse.random_keep(graph, keep, gen)
        masks = []
        for name, dim, g in members:
            line = torch.zeros(params[name].shape[dim])
            for j in keep_masks[g.id].nonzero().flatten().tolist():
                line[torch.as_tensor(next(m.index[j] for m in g.members if m.param == name and m.dim == dim))] = 1.0
            masks.append((name, dim, line))
        opt.zero_grad(set_to_none=True)
        fwd(masks, x, y).backward()
        opt.step()

    return step


# name -> label; the order is the order they are built and timed in
VARIANTS = {
    "dense-eager": "dense eager", "dense": "dense compiled",
    "masked-eager": "masked-dense eager", "masked": "masked-dense compiled",
    "sparse-eager": "sparse eager", "sparse": "sparse compiled",
    "sparse-bernoulli": "sparse compiled (Bernoulli masks)",
    "dynamic": "sparse dynamic (exact counts)", "dynamic-bernoulli": "sparse dynamic (Bernoulli masks)",
    "dynamic-bernoulli-align1": "sparse dynamic (Bernoulli masks, align 1)",
    "exported-eager": "exported eager", "exported": "exported compiled",
    "dense-infer": "dense inference", "exported-infer": "exported inference",
}
# (numerator, denominator): ratios of step times taken within each round (drift cancels)
PAIRS = [("sparse compiled", "exported compiled"), ("sparse dynamic (exact counts)", "sparse compiled"),
         ("sparse dynamic (Bernoulli masks)", "sparse compiled"),
         ("sparse compiled (Bernoulli masks)", "sparse compiled"),
         ("sparse dynamic (Bernoulli masks, align 1)", "sparse compiled"),
         ("sparse dynamic (exact counts)", "exported compiled"), ("exported inference", "dense inference")]
# sparse variants: (compile, capacity, masks drawn per channel (Bernoulli) or exact counts, align)
SPARSE = {"sparse-eager": (False, "exact", False, None), "sparse": (True, "exact", False, None),
          "sparse-bernoulli": (True, "auto", True, None), "dynamic": (True, "dynamic", False, None),
          "dynamic-bernoulli": (True, "dynamic", True, None), "dynamic-bernoulli-align1": (True, "dynamic", True, 1)}


def bench_model(name, batch, keep, steps, block_steps=1, precision="fp32", variants=tuple(VARIANTS)):
    """Build the chosen ``variants`` (first calls compile), then time them round-robin, one
    step of each per round (the order reversed every other round), so that machine drift
    hits all variants alike."""
    amp = Precision(precision, torch.device("cpu"))

    def in_precision(fn):
        def run():
            with amp.autocast():
                return fn()
        return run

    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    built, first, info = {}, {}, {}

    def fresh():
        torch.manual_seed(0)
        return zoo.create(name).train()

    def add(label, fn):
        fn = in_precision(fn)
        t = time.perf_counter()
        fn()
        first[label] = time.perf_counter() - t
        for _ in range(2):
            fn()
        built[label] = fn

    graph = fxsparse.analyze(fresh(), x)
    fixed = fxsparse.random_keep(graph, keep, torch.Generator().manual_seed(1))
    for key in variants:
        label = VARIANTS[key]
        compile_ = not key.endswith("-eager")
        if key.endswith("-infer"):
            add(label, make_inference_step(fresh() if key.startswith("dense") else fxsparse.export(fresh(), graph, fixed), x))
        elif key.startswith("dense") or key.startswith("exported"):
            m = fresh() if key.startswith("dense") else fxsparse.export(fresh(), graph, fixed).train()
            step, opt = make_dense_step(m, x, y, compile_)
            add(label, step)
            if not compile_:
                info[f"_mem {key.split('-')[0]}"] = saved_bytes(in_precision(lambda: F.cross_entropy(m(x), y))) + \
                    state_bytes(m.parameters(), opt)
        elif key.startswith("masked"):
            add(label, make_masked_dense_step(fresh(), graph, x, y, keep, compile_))
        else:
            compile_, capacity, bernoulli, align = SPARSE[key]
            m = fresh()
            sp = fxsparse.compile(m, x, keep=keep, compile=compile_, capacity=capacity, align=align,
                                  graph=fxsparse.analyze(m, x))
            opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            step = sp.make_train_step(F.cross_entropy, opt)
            sp.train()
            if bernoulli:
                def run(sp=sp, step=step):
                    sp.sample_masks(keep)
                    step(x, y)
            else:
                def run(sp=sp, step=step):
                    sp.masks = fxsparse.random_keep(sp.channel_graph, keep, sp.generator)
                    step(x, y)
            add(label, run)
            info[f"_compilations {label}"] = sp
            if key == "sparse-eager":
                info["_mem sparse"] = sparse_bytes(sp, m, opt, x, y, in_precision)
    times = {k: [] for k in built}
    per_round = {k: [] for k in built}
    order = list(built)
    for r in range(steps):
        for label in (order if r % 2 == 0 else order[::-1]):
            block = []
            for i in range(block_steps + (block_steps > 1)):
                t = time.perf_counter()
                built[label]()
                if block_steps == 1 or i:  # in blocks, the first step (after another model's) is not timed
                    block.append(time.perf_counter() - t)
            times[label] += block
            per_round[label].append(statistics.median(block))
    rows = {k: (statistics.median(v), first[k]) for k, v in times.items()}
    for k, v in info.items():
        rows[k] = v.compilations if k.startswith("_compilations") else v
    for a, b in PAIRS:
        if a in per_round and b in per_round:
            rows[f"_ratio {a} / {b}"] = [s / e for s, e in zip(per_round[a], per_round[b])]
    return rows


def sparse_bytes(sp, m, opt, x, y, in_precision):
    """Training memory of the sparse step: activations saved for the backward, compact
    gradients, dense weights and optimizer state."""
    plan = sp.step_inputs()
    gathered, _, _ = gather_leaves(sp, plan)
    act = saved_bytes(in_precision(lambda: F.cross_entropy(forward_gathered(sp, gathered, plan, x, empty_zeroed=True), y)))
    compact_grads = sum(g.numel() * g.element_size() for g in gathered.values() if g.requires_grad)
    dense_params = sum(p.numel() * p.element_size() for p in m.parameters())
    return act + state_bytes(m.parameters(), opt) - dense_params + compact_grads  # weights + state, grads compact


def quartiles(values):
    """(first quartile, median, third quartile)."""
    q = statistics.quantiles(values, n=4) if len(values) > 1 else list(values) * 3
    return q[0], statistics.median(values), q[2]


def print_rows(name, rows, args, precision):
    base = rows.get("dense compiled", (None,))[0]
    table = [[k, f"{v[0] * 1e3:.1f}", f"{base / v[0]:.2f}x" if base else "", f"{v[1]:.1f}"]
             for k, v in rows.items() if not k.startswith("_")]
    how = f"{args.steps} rounds of {args.block} steps in a row" if args.block > 1 else f"{args.steps} round-robin steps"
    print(f"\n{name}, batch {args.batch}, keep {args.keep}, {precision}, {args.threads} threads, median of {how}")
    print(tabulate(table, headers=["variant", "step ms", "speed-up vs dense compiled", "first call s (compile)"]))
    for k, v in rows.items():
        if k.startswith("_ratio "):
            q1, mid, q3 = quartiles(v)
            print(f"{k[7:]}: per round {mid:.3f}x (quartiles {q1:.3f}-{q3:.3f})")
    if "_mem sparse" in rows and "_mem dense" in rows:
        print(f"training memory sparse / dense: {rows['_mem sparse'] / rows['_mem dense']:.2f} "
              f"({rows['_mem sparse'] / 2**20:.1f} MiB vs {rows['_mem dense'] / 2**20:.1f} MiB)")
    compiled = {k[14:]: v for k, v in rows.items() if k.startswith("_compilations ")}
    print("compilations: " + ", ".join(f"{k}: {v}" for k, v in compiled.items()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vgg11_bn", "resnet20", "resnet18_cifar"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--block", type=int, default=1,
                        help="steps of a variant in a row per round (default 1: strict round-robin, every step "
                             "follows another model's, caches cold); with K > 1 each block runs K + 1 steps and "
                             "times the last K, as in a training loop")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                        help="autocast dtype of every variant's step; several: each timed in the same run, "
                             "one after the other (default %(default)s; the bench runs on the CPU)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT",
                        help=f"which variants to build and time (default all: {' '.join(VARIANTS)})")
    parser.add_argument("--json", default="step_time.json")
    parser.add_argument("--warm-cache", action="store_true",
                        help="reuse torch.compile's on-disk cache (default: a fresh one, so compile times are cold)")
    args = parser.parse_args(argv)
    for flag in ("steps", "block", "batch", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    try:
        check_fraction(args.keep, "--keep")
    except ValueError as err:
        parser.error(str(err))
    if not args.warm_cache:
        import os
        import tempfile

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fxsparse-bench-")
        os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "0"
        os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "0"
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    results = {}
    for name in args.models:
        for precision in args.precision:
            rows = bench_model(name, args.batch, args.keep, args.steps, args.block, precision, args.variants)
            results[name if len(args.precision) == 1 else f"{name} {precision}"] = rows
            print_rows(name, rows, args, precision)
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
