"""``fxsparse bench phases``: where the time of one compiled sparse training step goes, phase by
phase, next to the exported model's step (what is measured: ``fxsparse bench phases --help``,
:data:`fxsparse.bench_args.PHASES_HELP`). The sparse step's phases are those its
:attr:`fxsparse.step.train_step.TrainStep.on_phase` hook reports (:data:`~fxsparse.step.train_step.PHASES`)."""
from __future__ import annotations

import statistics
import time

import torch
from tabulate import tabulate

import fxsparse
from fxsparse.bench import quartiles
from fxsparse.bench_models import kind_of, workload
from fxsparse.step.train_step import PHASES

SPARSE_PHASES = ("masks",) + PHASES
EXPORTED_PHASES = ("forward", "backward", "update")


def run_phases(args) -> dict:
    """The bench of the parsed ``args`` (:func:`fxsparse.bench_args.parse_phases_args`), printed;
    returns {"sparse": {phase: median s}, "exported": {phase: median s}, "ratios": [per round]}."""
    torch.set_num_threads(args.threads)
    work = workload(args.model, args.batch, args.seq)  # a zoo CNN or a decoder of fxsparse.bench_models
    x, y, loss_fn = work.inputs, work.target, work.loss
    model = work.fresh()
    sp = fxsparse.compile(model, x, keep=args.keep, capacity=args.capacity)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    step = sp.make_train_step(loss_fn, opt)
    sp.train()

    def new_masks():
        sp.masks = fxsparse.random_keep(sp.channel_graph, args.keep, sp.generator)

    for _ in range(args.warmup):  # compile and warm up through the real step
        new_masks()
        step(*x, y)

    small = fxsparse.export(work.fresh(), sp.channel_graph, sp.masks).train()
    small_opt = torch.optim.SGD(small.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    small_loss = torch.compile(lambda a, b: loss_fn(small(*a), b))

    def exported_step():
        small_opt.zero_grad(set_to_none=True)
        small_loss(x, y).backward()
        small_opt.step()

    for _ in range(args.warmup):
        exported_step()

    def sparse_phases():
        t = [time.perf_counter()]
        new_masks()
        t.append(time.perf_counter())
        step.on_phase = lambda phase: t.append(time.perf_counter())
        step(*x, y)
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
        return dict(zip(EXPORTED_PHASES, (b - a for a, b in zip(t, t[1:]))))

    def whole(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    sparse, exported, ratios = {k: [] for k in SPARSE_PHASES}, {k: [] for k in EXPORTED_PHASES}, []
    for r in range(args.steps):
        for k, v in sparse_phases().items():
            sparse[k].append(v)
        for k, v in exported_phases().items():
            exported[k].append(v)
        if r % 2 == 0:  # which goes first alternates per round
            a = whole(lambda: (new_masks(), step(*x, y)))
            b = whole(exported_step)
        else:
            b = whole(exported_step)
            a = whole(lambda: (new_masks(), step(*x, y)))
        ratios.append(a / b)
    medians = {"sparse": {k: statistics.median(v) for k, v in sparse.items()},
               "exported": {k: statistics.median(v) for k, v in exported.items()}, "ratios": ratios}
    print_phases(medians, args, batch=len(x[0]))
    return medians


def print_phases(medians: dict, args, batch: int) -> None:
    """The table of :func:`run_phases`'s ``medians``; ``batch``: the batch it ran (``--batch`` or its kind's default)."""
    sparse, exported = medians["sparse"], medians["exported"]
    rows = [[k, f"{v * 1e3:.2f}", f"{exported[k] * 1e3:.2f}" if k in exported else ""] for k, v in sparse.items()]
    rows.append(["sum of phases", f"{sum(sparse.values()) * 1e3:.2f}", f"{sum(exported.values()) * 1e3:.2f}"])
    q1, mid, q3 = quartiles(medians["ratios"])
    tokens = f", sequence {args.seq}" if kind_of(args.model) == "decoder" else ""
    print(f"{args.model}, batch {batch}{tokens}, keep {args.keep}, {args.capacity} capacities: median ms per phase "
          f"over {args.steps} rounds")
    print(tabulate(rows, headers=["phase", "sparse compiled", "exported compiled"]))
    print(f"whole steps, sparse / exported per round: median {mid:.3f}x (quartiles {q1:.3f}-{q3:.3f})")
