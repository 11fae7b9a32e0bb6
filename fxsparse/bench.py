"""Training-step time of dense vs sparse execution, measured side by side in one run: the
variants, how they are timed and what the memory count counts are ``fxsparse bench --help``
(:mod:`fxsparse.bench_args`, torch-free)."""
from __future__ import annotations

import json
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from tabulate import tabulate

import fxsparse
from fxsparse.core.broadcast import along
from fxsparse.bench_args import VARIANTS, parse_args
from fxsparse.bench_models import DEFAULT_BATCH, kind_of, workload
from fxsparse.step.forward import forward_gathered
from fxsparse.step.leaves import gather_leaves
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


def make_dense_step(model, x, y, compile_, loss=F.cross_entropy):
    """``x``: the model's positional inputs (a tuple); ``loss(output, y)``."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    fwd = torch.compile(lambda a, b: loss(model(*a), b)) if compile_ else (lambda a, b: loss(model(*a), b))

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
            model(*x)

    return step


def make_masked_dense_step(model, graph, x, y, keep, compile_, loss=F.cross_entropy):
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
        return loss(functional_call(model, tensors, a), b)

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


def bench_model(name, batch, keep, steps, block_steps=1, precision="fp32", variants=tuple(VARIANTS), seq=256):
    """Build the chosen ``variants`` (first calls compile), then time them round-robin, one
    step of each per round (the order reversed every other round), so that machine drift
    hits all variants alike. ``name``: a zoo CNN or a decoder of
    :data:`fxsparse.bench_models.DECODERS` (``seq`` tokens; ``batch`` None: the kind's default)."""
    amp = Precision(precision, torch.device("cpu"))

    def in_precision(fn):
        def run():
            with amp.autocast():
                return fn()
        return run

    work = workload(name, batch, seq)
    x, y, loss, fresh = work.inputs, work.target, work.loss, work.fresh
    built, first, info = {}, {}, {}

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
            step, opt = make_dense_step(m, x, y, compile_, loss)
            add(label, step)
            if not compile_:
                info[f"_mem {key.split('-')[0]}"] = saved_bytes(in_precision(lambda: loss(m(*x), y))) + \
                    state_bytes(m.parameters(), opt)
        elif key.startswith("masked"):
            add(label, make_masked_dense_step(fresh(), graph, x, y, keep, compile_, loss))
        else:
            compile_, capacity, bernoulli, align = SPARSE[key]
            m = fresh()
            sp = fxsparse.compile(m, x, keep=keep, compile=compile_, capacity=capacity, align=align,
                                  graph=fxsparse.analyze(m, x))
            opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            step = sp.make_train_step(loss, opt)
            sp.train()
            if bernoulli:
                def run(sp=sp, step=step):
                    sp.sample_masks(keep)
                    step(*x, y)
            else:
                def run(sp=sp, step=step):
                    sp.masks = fxsparse.random_keep(sp.channel_graph, keep, sp.generator)
                    step(*x, y)
            add(label, run)
            info[f"_compilations {label}"] = sp
            if key == "sparse-eager":
                info["_mem sparse"] = sparse_bytes(sp, m, opt, x, y, in_precision, loss)
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


def sparse_bytes(sp, m, opt, x, y, in_precision, loss=F.cross_entropy):
    """Training memory of the sparse step: activations saved for the backward, compact
    gradients, dense weights and optimizer state."""
    step = sp.step_inputs(x)
    leaves = gather_leaves(step, sp.compiler)
    act = saved_bytes(in_precision(lambda: loss(forward_gathered(step.build, leaves.tensors, step.index.buffers, x), y)))
    compact_grads = sum(g.numel() * g.element_size() for g in leaves.tensors.values() if g.requires_grad)
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
    batch = args.batch or DEFAULT_BATCH[kind_of(name)]
    tokens = f", sequence {args.seq}" if kind_of(name) == "decoder" else ""
    print(f"\n{name}, batch {batch}{tokens}, keep {args.keep}, {precision}, {args.threads} threads, median of {how}")
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
    run_bench(parse_args(argv))


def run_bench(args):
    """The bench of the parsed ``args`` (:func:`fxsparse.bench_args.parse_args`)."""
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
            rows = bench_model(name, args.batch, args.keep, args.steps, args.block, precision, args.variants, args.seq)
            results[name if len(args.precision) == 1 else f"{name} {precision}"] = rows
            print_rows(name, rows, args, precision)
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
