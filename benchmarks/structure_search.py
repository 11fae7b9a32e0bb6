"""Does the structure search learn? Learned channel structures against random and L1 ones,
at equal training FLOPs and at equal wall time, several seeds, on the real Fashion-MNIST.

    python benchmarks/structure_search.py --table vgg11-high      # VGG-11-BN, FLOPs 0.08
    python benchmarks/structure_search.py --table vgg11-quarter   # VGG-11-BN, FLOPs 0.25
    python benchmarks/structure_search.py --table resnet20-high   # ResNet-20, FLOPs 0.08
    python benchmarks/structure_search.py --table lenet5-high     # LeNet-5, FLOPs 0.08
    python benchmarks/structure_search.py --table lenet5-extreme  # LeNet-5, FLOPs 0.03
    python benchmarks/structure_search.py --table vgg11-high --report   # the table and plot only

Each run is one ``fxsparse.training.trainer.Trainer`` run (what ``fxsparse train`` runs) in its own
process. Every finished run appends one JSON record to ``OUT/records.jsonl``; a run already
recorded is skipped, so a table can be completed over several sittings. Runs, per seed:

* VR-PGE variants: ``paper`` (one score per channel, the authors' preconditioned score, Adam
  12e-3, best of 10 sampled masks), ``channel`` (per channel, calibrated rate, top-k final
  mask), ``width`` (one keep ratio per group, channels by L1 order, the weights trained on
  the first sampled mask), and ``width+channel``. Each searches ``--search`` epochs and
  fine-tunes the rest; ``width-short`` searches half as long (the search's cost in accuracy
  and time); ``width-mean`` (the default of ``fxsparse train``) trains the weights on the
  policy's typical sub-network (each group's first round(w n) channels) while 2 fresh
  samples score; ``channel-lr0.1``: per-channel scores, a fixed score lr 0.1, best of 10.
* fixed masks chosen at initialisation, trained for as many steps as cost the reference
  run's training FLOPs (``@flops``): random channels with a uniform per-group keep
  ratio, random channels with the per-group counts the reference run learned (same seed:
  this separates the allocation from the choice of channels), L1-filter (uniform per group,
  the paper's way), SNIP and SynFlow (global order, filling the FLOPs budget).
* random (uniform) and L1 again with as many steps as fit in the reference run's time
  (``@wall``, from their own ``@flops`` time).

The fixed runs of a seed take the training FLOPs and the time of that seed's reference
(``vrpge-width``) run; the default (``vrpge-width-mean``) costs 5-9% more FLOPs and 3-18%
more time than it (two fresh score forwards instead of one), so against the default the
fixed runs have slightly less of both. The comparisons the targets name run first, for every seed.
* dense, one seed (a reference, not a contender).

Runs are eager (``compile=False``): at these lengths torch.compile's cold compiles on a
2-core CPU (minutes per capacity set) would dominate every wall time. Each run uses one
thread, and "time" is the run's CPU time (``time.process_time``, the whole ``Trainer.run``:
search, final-mask choice, fine-tune, evaluations, export): on a machine shared with other
work, a single-threaded run's CPU time is its wall time without the waiting (wall time is
recorded too).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_args import records, run_child  # noqa: E402

TABLES = {
    "vgg11-high": dict(model="zoo:vgg11_bn", keep=0.08),
    "vgg11-quarter": dict(model="zoo:vgg11_bn", keep=0.25),
    "resnet20-high": dict(model="zoo:resnet20", keep=0.08),
    # a small CNN whose uniform cut leaves ~5 channels in its first conv (LeNet-5 diverges at lr 0.05)
    "lenet5-high": dict(model="zoo:lenet5", keep=0.08, lr=0.01),
    "lenet5-extreme": dict(model="zoo:lenet5", keep=0.03, lr=0.01),  # uniform: 3 of conv1's 20 channels
    # depthwise/pointwise blocks whose layers differ in cost: where learned allocations should pay
    # the fixed runs here take the time of the default (width-mean), not of vrpge-width: vrpge-width
    # collapses on some seeds, and a collapsed run's short time would starve the runs compared with it
    "mobilenetv2-tenth": dict(model="zoo:mobilenetv2", keep=0.1, reference="vrpge-width-mean"),
    "mobilenetv2-twentieth": dict(model="zoo:mobilenetv2", keep=0.05, reference="vrpge-width-mean"),
}
REFERENCE = "vrpge-width"  # the run whose training FLOPs and time the fixed runs get (unless a table names its own)
# label: (method, config overrides, method options); "@flops"/"@wall" runs get their epochs later
VRPGE = {
    "vrpge-paper": ("vrpge", {}, dict(granularity="channel", score_lr=0.012, final="sample", weight_masks="sampled",
                                      experimental={"form": "preconditioned"})),
    "vrpge-channel": ("vrpge", {}, dict(granularity="channel", weight_masks="sampled")),
    # the weights train on the first sampled mask (the paper's way), the score step reuses its loss
    "vrpge-width": ("vrpge", {}, dict(granularity="width", weight_masks="sampled")),
    "vrpge-width+channel": ("vrpge", {}, dict(granularity="width+channel", weight_masks="sampled")),
    # the default: the weights train on the policy's typical sub-network, the samples only score (K fresh forwards)
    "vrpge-width-mean": ("vrpge", {}, dict(granularity="width", weight_masks="mean")),
    # the default with each width drawn in 16 equal units (wide layers perturbed as much as narrow ones)
    "vrpge-width-mean-u16": ("vrpge", {}, dict(granularity="width", weight_masks="mean", width_units=16)),
    # ... and the choices that stopped the collapse on trained weights (benchmarks/compress.py): the budget
    # tightened from the dense model over the first half of the search, the scale projection
    "vrpge-width-mean-u16-ramp": ("vrpge", {}, dict(granularity="width", weight_masks="mean", width_units=16,
                                                    budget_ramp=0.5, projection="scale")),
    # the default with a width floor (MetaPruning's search space starts at 10 % of each layer)
    "vrpge-width-mean-floor": ("vrpge", {}, dict(granularity="width", weight_masks="mean", min_width=0.1)),
    "vrpge-width-mean-u16-floor": ("vrpge", {}, dict(granularity="width", weight_masks="mean", min_width=0.1,
                                                     width_units=16)),
    # per-channel scores at a fixed score lr 0.1, the authors' final mask
    "vrpge-channel-lr0.1": ("vrpge", {}, dict(granularity="channel", score_lr=0.1, final="sample", weight_masks="sampled")),
    # the search's cost: half as long a search, the fine-tune longer by as much
    "vrpge-width-short": ("vrpge", dict(epochs="half"), dict(granularity="width", weight_masks="sampled")),
}
FIXED = {
    "random-uniform@flops": ("random", {}, dict(scope="per_group", budget="flops")),
    "random-learned-alloc@flops": ("random", {}, dict(allocation="learned")),
    "l1-filter@flops": ("l1_filter", {}, dict(scope="per_group", budget="flops")),
    # Li et al. 2022's random allocation search, at initialisation (one-shot scores of untrained weights)
    "random-search@flops": ("random_search", {}, dict(budget="flops")),
    "snip@flops": ("snip", {}, dict(scope="global", budget="flops")),
    "synflow@flops": ("synflow", {}, dict(scope="global", budget="flops")),
    "random-uniform@wall": ("random", {}, dict(scope="per_group", budget="flops")),
    "l1-filter@wall": ("l1_filter", {}, dict(scope="per_group", budget="flops")),
    "random-search@wall": ("random_search", {}, dict(budget="flops")),
}


# the comparisons the targets name first (every seed), then the rest (every seed)
ORDER = [["vrpge-width", "vrpge-width-mean", "vrpge-width-mean-u16-ramp", "random-uniform@flops", "l1-filter@flops", "random-learned-alloc@flops", "random-uniform@wall",
          "l1-filter@wall", "random-search@flops", "random-search@wall"], ["vrpge-channel", "vrpge-paper", "snip@flops", "synflow@flops", "vrpge-width+channel",
                                                                    "vrpge-width-short", "vrpge-channel-lr0.1", "vrpge-width-mean-u16", "vrpge-width-mean-floor", "vrpge-width-mean-u16-floor"]]


def find(recs, table, label, seed=None):
    return [r for r in recs if r["table"] == table and r["label"] == label and (seed is None or r["seed"] == seed)]


def child(path):
    import torch

    from fxsparse.analysis.flops import TRAIN_FACTOR
    from fxsparse.training.trainer import TrainConfig, Trainer

    with open(path) as f:
        spec = json.load(f)
    torch.set_num_threads(spec["threads"])
    # denormal floats in the first steps' gradients made eager steps up to 20x slower here
    # (2.4 s instead of 0.15 s per VGG-11 search step); flushing them costs no accuracy
    torch.set_flush_denormal(True)
    cfg = spec["config"]
    if os.path.exists(cfg["out"]):
        shutil.rmtree(cfg["out"])  # an interrupted run starts over: its record was never written
    log = lambda s: print(f"  [{spec['label']} s{spec['seed']}] {s}", flush=True)  # noqa: E731
    tr = Trainer(TrainConfig(**cfg), log=log, progress=False)
    if spec.get("match_flops"):  # steps for these training FLOPs at the mask's own FLOPs (the uniform
        keep = tr.method.channel_keep()  # ratio can fall short of the budget on small groups)
        frac = tr.flops.fraction(tr.flops.flat(keep))
        per_epoch = TRAIN_FACTOR * frac * tr.flops.dense * tr.state.steps_per_epoch * cfg["batch_size"]
        cfg = dict(cfg, epochs=spec["match_flops"] / per_epoch)
        shutil.rmtree(cfg["out"], ignore_errors=True)
        tr = Trainer(TrainConfig(**cfg), log=log, progress=False)
    cpu = time.process_time()
    tr.run()
    cpu = time.process_time() - cpu
    groups = tr.graph.prunable_groups if tr.graph is not None else []
    masks = tr.masks
    search = [r.get("search") for r in tr.history if r.get("search")]
    rec = {k: spec[k] for k in ("table", "label", "seed")}
    rec.update(model=cfg["model"], keep=cfg["keep"], method=cfg["method"], epochs=cfg["epochs"] + cfg["finetune_epochs"],
               search_epochs=cfg["epochs"] if cfg["method"] == "vrpge" else 0.0,
               test_acc=tr.history[-1]["test_acc_pct"] / 100, train_flops=tr.train_flops, wall_s=tr.elapsed, cpu_s=cpu,
               final_flops=tr.history[-1]["realised_flops_frac"],
               group_sizes=[g.size for g in groups],
               group_counts=[int(masks[g.id].sum()) for g in groups] if masks is not None else None,
               group_names=tr.history[-1].get("group_names") or [sorted({m.layer for m in g.members})[0] for g in groups],
               search=search[-1] if search else None, steps=tr.state.step, torch=torch.__version__,
               threads=torch.get_num_threads())
    with open(cfg["out"] + ".record.json", "w") as f:
        json.dump(rec, f)


def base_config(args, table, label, seed, method, overrides, options, epochs, search):
    t = TABLES[table]
    cfg = dict(model=t["model"], data="fashion-mnist", data_root=args.data_root, method=method, keep=t["keep"],
               budget="flops", epochs=search if method == "vrpge" else epochs,
               finetune_epochs=epochs - search if method == "vrpge" else 0.0, batch_size=args.batch_size,
               lr=t.get("lr", args.lr),
               compile=False, seed=seed, out=os.path.join(args.out, table, f"{label}_s{seed}"), method_options=options)
    cfg.update(overrides)
    if cfg["epochs"] == "half":
        cfg["epochs"], cfg["finetune_epochs"] = search / 2, epochs - search / 2
    return {"config": cfg, "label": label, "seed": seed, "table": table, "threads": args.threads}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", choices=sorted(TABLES), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=float, default=3.0, help="epochs of every VR-PGE run (search + fine-tune)")
    p.add_argument("--search", type=float, default=0.5, help="search epochs of the VR-PGE runs")
    p.add_argument("--only", nargs="*", help="labels to run (default: all)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (a table may set its own)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1: no OpenMP spin-waits when the machine is shared)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="runs/structure_search")
    p.add_argument("--records", default=None, help="records file (default: OUT/records.jsonl)")
    p.add_argument("--report", action="store_true", help="only print the table (and write the plot)")
    p.add_argument("--plot", default=None, help="allocation plot (PNG) of the learned runs")
    args = p.parse_args(argv)
    path = args.records or os.path.join(args.out, "records.jsonl")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    table = args.table
    wanted = lambda label: not args.only or label in args.only

    def run(label, seed, method, overrides, options, epochs, search=0.0, match_flops=None):
        if find(records(path), table, label, seed) or not wanted(label):
            return
        print(f"== {table} {label} seed {seed} ({epochs:.3f} epochs)", flush=True)
        spec = base_config(args, table, label, seed, method, overrides, options, epochs, search)
        spec["match_flops"] = match_flops
        rec = run_child(__file__, spec, spec["config"]["out"], f"{spec['label']} seed {spec['seed']}")
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    if not args.report:
        for labels, seed in [(labels, seed) for labels in ORDER for seed in args.seeds]:
            for label in labels:
                method, overrides, options = {**VRPGE, **FIXED}[label]
                if label in VRPGE:
                    run(label, seed, method, overrides, options, args.epochs, args.search)
                    continue
                ref = find(records(path), table, TABLES[table].get("reference", REFERENCE), seed)
                if not ref:
                    continue  # the fixed runs take their FLOPs and wall time from this seed's default run
                opts = dict(options)
                if opts.get("allocation") == "learned":
                    opts["allocation"] = ref[0]["group_counts"]
                match = None
                if label.endswith("@flops"):  # the run sets its steps from its mask's own FLOPs
                    epochs, match = args.epochs, ref[0]["train_flops"]
                else:  # as many steps as fit in the default run's time, at this run's own speed
                    same = find(records(path), table, label.replace("@wall", "@flops"), seed)
                    if not same:
                        continue
                    epochs = same[0]["epochs"] * ref[0]["cpu_s"] / same[0]["cpu_s"]
                run(label, seed, method, overrides, opts, epochs, match_flops=match)
        run("dense", args.seeds[0], "dense", {}, {}, args.epochs)
    report(records(path), table, args.plot)


def report(recs, table, plot=None):
    from tabulate import tabulate

    recs = [r for r in recs if r["table"] == table]
    if not recs:
        print("no records yet")
        return
    labels = list(dict.fromkeys([*VRPGE, *FIXED, "dense"]))
    rows = []
    for label in labels:
        rs = find(recs, table, label)
        if not rs:
            continue
        acc = [100 * r["test_acc"] for r in rs]
        mean = statistics.mean(acc)
        sd = statistics.stdev(acc) if len(acc) > 1 else float("nan")
        rows.append([label, len(rs), f"{mean:.2f}", f"{sd:.2f}", f"{sd / math.sqrt(len(acc)):.2f}" if len(acc) > 1 else "",
                     " ".join(f"{a:.2f}" for a in acc), f"{statistics.mean(r['epochs'] for r in rs):.2f}",
                     f"{statistics.mean(r['train_flops'] for r in rs) / 1e12:.2f}",
                     f"{statistics.mean(r['cpu_s'] for r in rs):.0f}", f"{statistics.mean(r['final_flops'] for r in rs):.3f}"])
    t = TABLES[table]
    print(f"\n{table}: {t['model']}, FLOPs budget {t['keep']}, Fashion-MNIST 60k/10k")
    print(tabulate(rows, headers=["run", "seeds", "test acc %", "sd", "se", "per seed", "epochs", "train TFLOP",
                                  "time s (CPU, 1 thread)", "final FLOPs (frac of dense)"], tablefmt="github"))
    learned = [r for r in recs if r["method"] == "vrpge" and r.get("group_counts")]
    by_label = {}
    for r in learned:
        by_label.setdefault(r["label"], []).append(r)
    for label, rs in by_label.items():
        fracs = [[c / n for c, n in zip(r["group_counts"], r["group_sizes"])] for r in rs]
        print(f"{label}: per-group keep " + " | ".join(" ".join(f"{v:.2f}" for v in f) for f in fracs)
              + f"; rank correlation across seeds {_pairwise_rank_corr(fracs):.2f}")
    if plot and by_label:
        _plot(by_label, recs, plot, table)


def _pairwise_rank_corr(rows):
    import torch

    from fxsparse.methods.vrpge import spearman

    pairs = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:]]
    vals = [spearman(torch.tensor(a), torch.tensor(b)) for a, b in pairs]
    vals = [v for v in vals if v == v]
    return statistics.mean(vals) if vals else float("nan")


def _plot(by_label, recs, path, table):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    first = next(iter(by_label.values()))[0]
    names = [f"{i}: {n}" for i, n in enumerate(first["group_names"])]  # a layer can touch two groups
    x = list(range(len(names)))
    uniform = find(recs, table, "random-uniform@flops")
    if uniform and uniform[0].get("group_counts"):
        u = uniform[0]
        ax.plot(x, [c / n for c, n in zip(u["group_counts"], u["group_sizes"])], "k--", label="uniform (random, L1)")
    for label, rs in by_label.items():
        for i, r in enumerate(rs):
            ax.plot(x, [c / n for c, n in zip(r["group_counts"], r["group_sizes"])], marker="o", alpha=0.7,
                    color=f"C{list(by_label).index(label)}", label=label if i == 0 else None)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("kept fraction of the group's channels")
    ax.set_title(f"{table}: per-layer allocation of the final masks (one line per seed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
