"""Compressing a trained model: structure search against the criteria users pick, on the real
Fashion-MNIST, at equal budgets, equal recovery and equal wall time, several seeds.

    python benchmarks/compress.py dense                       # the trained models (one per model and seed)
    python benchmarks/compress.py pilot                       # VR-PGE variants on one model, seed, budget
    python benchmarks/compress.py table --budgets 0.1 0.25    # every method, 1 epoch of recovery
    python benchmarks/compress.py wall  --budgets 0.1         # recovery at the default's wall time
    python benchmarks/compress.py report                      # the tables (markdown) from the records
    python benchmarks/compress.py snapshot                    # records + dense accuracies -> benchmarks/compress_records.jsonl
    python benchmarks/compress.py report --records benchmarks/compress_records.jsonl   # the README's tables

Stages (each appends one JSON record per finished run to ``OUT/records.jsonl``; a run
already recorded is skipped, so a stage can be stopped and run again to continue):

* ``dense``: ``fxsparse train --method dense`` for ``--dense-epochs`` at lr 0.05 (cosine), once
  per model and seed; its ``model.safetensors`` seeds every method of that seed.
* ``pilot``: the VR-PGE choices of how to search on trained weights (weights fixed and every
  step forward-only, or a weight step every step; the budget at its target from the first
  step, or a gradual ramp from the dense model; widths, channels or widths then channels;
  K = 2 or 4 samples), on ``--pilot-model`` / seed 0 / the first budget.
* ``table``: per model, seed and FLOPs budget, every method from the same trained weights:
  the one-shot test accuracy (after BatchNorm re-estimation on 50 training batches, before
  any training) and the test accuracy after 1 epoch of recovery (SGD lr 0.01, cosine); the
  search's or selection's CPU time; the kept channels per group.
* ``wall``: each method again with as many recovery epochs as fit in the default method's
  total CPU time (its search included), at the method's own measured speed.

Every run is an ``fxsparse.training.trainer.Trainer`` run (what ``fxsparse train --init``
runs) in its own process with one thread, eager (``compile=False``: at these lengths cold
compiles on a 2-core CPU would dominate the times), ``torch.set_flush_denormal(True)``.
Times are CPU times of the process (``time.process_time``), which on a shared machine are the
single-threaded run's wall time without the waiting; wall times are recorded too.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_args import records, run_child  # noqa: E402

MODELS = ["resnet20", "vgg11_bn", "mobilenetv2"]
RECOVERY_LR = 0.01
DEFAULT = "vrpge"  # the label whose total time the @wall runs get
# label: (method, method options, search epochs). Fixed-mask criteria select at initialisation.
METHODS = {
    "l1_filter": ("l1_filter", {}, 0.0),          # uniform ratio per layer, L1 order
    "l1_global": ("l1_global", {}, 0.0),          # global, FLOPs-normalised
    "taylor": ("taylor", {"batches": 64}, 0.0),   # Molchanov et al. 2019, 64 batches
    "obd": ("obd", {"batches": 64}, 0.0),         # diagonal empirical Fisher, 64 batches
    "random": ("random", {"scope": "per_group"}, 0.0),  # random channels, uniform ratio
    "random_search": ("random_search", {"samples": 32}, 0.0),  # Li et al. 2022 (samples matched below)
    "l0": ("l0", {}, 0.25),                      # hard-concrete gates, a quarter epoch of joint training
}
# VR-PGE on trained weights: the pilot's variants; the chosen one runs in the table as "vrpge"
VRPGE_VARIANTS = {
    "vrpge-fixed-width": dict(weight_every=0, granularity="width"),
    "vrpge-fixed-width-ramp": dict(weight_every=0, granularity="width", budget_ramp=0.5),
    "vrpge-fixed-channel": dict(weight_every=0, granularity="channel"),
    "vrpge-fixed-width+channel": dict(weight_every=0, granularity="width+channel"),
    "vrpge-fixed-width-k4": dict(weight_every=0, granularity="width", samples=4),
    "vrpge-joint-width": dict(weight_every=1, granularity="width"),
    "vrpge-joint-width-ramp": dict(weight_every=1, granularity="width", budget_ramp=0.5),
    "vrpge-fixed-channel-ramp": dict(weight_every=0, granularity="channel", budget_ramp=0.5),
    "vrpge-fixed-channel-k4": dict(weight_every=0, granularity="channel", samples=4),
    "vrpge-joint-channel-ramp": dict(weight_every=1, granularity="channel", budget_ramp=0.5),
    # the budget scales every width by one factor (the allocation moves only with the loss signal)
    "vrpge-fixed-width-ramp-scale": dict(weight_every=0, granularity="width", budget_ramp=0.5, projection="scale"),
    "vrpge-joint-width-scale": dict(weight_every=1, granularity="width", projection="scale"),
    "vrpge-joint-width-ramp-scale": dict(weight_every=1, granularity="width", budget_ramp=0.5, projection="scale"),
    "vrpge-fixed-channel-ramp-scale": dict(weight_every=0, granularity="channel", budget_ramp=0.5, projection="scale"),
    # widths drawn in equal units (16 or 32 per layer): wide layers perturbed as much as narrow ones
    "vrpge-joint-width-scale-u16": dict(weight_every=1, granularity="width", projection="scale", width_units=16),
    "vrpge-joint-width-scale-u32": dict(weight_every=1, granularity="width", projection="scale", width_units=32),
    "vrpge-joint-width-u16": dict(weight_every=1, granularity="width", width_units=16),
    "vrpge-joint-width-ramp-scale-u16": dict(weight_every=1, granularity="width", budget_ramp=0.5, projection="scale",
                                             width_units=16),
    # the same, half as long a search (0.125 epoch): the run's time against L1's
    "vrpge-joint-width-ramp-scale-u16-half": dict(weight_every=1, granularity="width", budget_ramp=0.5,
                                                  projection="scale", width_units=16),
}
# search epochs of the variants that do not search for SEARCH_EPOCHS
VARIANT_SEARCH = {"vrpge-joint-width-ramp-scale-u16-half": 0.125}
# the pilot's choice (README): the weights train on the typical sub-network during the search, and
# the budget scales every width by one factor; = VRPGE_FROM_TRAINED (fxsparse/methods/defaults.py), what `--init` runs
VRPGE_CHOSEN = "vrpge-joint-width-ramp-scale-u16"
SEARCH_EPOCHS = 0.25


def find(recs, **key):
    return [r for r in recs if all(r.get(k) == v for k, v in key.items())]


def dense_dir(args, model, seed):
    return os.path.join(args.out, "dense", f"{model}_s{seed}")


# ----------------------------------------------------------------------------- one run

def child(path):
    import torch

    from fxsparse.training.trainer import TrainConfig, Trainer

    with open(path) as f:
        spec = json.load(f)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # denormals made eager steps up to 20x slower here
    cfg = spec["config"]
    if os.path.exists(cfg["out"]):
        shutil.rmtree(cfg["out"])  # an interrupted run starts over: its record was never written
    tag = spec["record"]
    log = lambda s: print(f"  [{tag.get('label')} {tag.get('model')} s{tag.get('seed')} b{tag.get('budget')}] {s}",  # noqa: E731
                          flush=True)
    marks = {}

    def on_step(tr, event, **info):  # CPU time when the recovery (fixed-mask) phase took its first step
        if event == "step" and "recovery" not in marks:
            first = sum(n for name, n in tr.plan.phases if name not in ("fixed", "finetune"))
            if tr.state.step == first + 1:
                marks["recovery"] = time.process_time()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    tr = Trainer(TrainConfig(**cfg), log=log, progress=False, callbacks=[on_step])
    summary = tr.run()
    cpu = time.process_time() - cpu0
    groups = tr.graph.prunable_groups if tr.graph is not None else []
    rec = dict(tag)
    rec.update(method=cfg["method"], options=cfg["method_options"], search_epochs=cfg["epochs"],
               recovery_epochs=cfg["finetune_epochs"], test_acc=summary["test_acc_pct"],
               oneshot_acc=summary.get("oneshot_test_acc_pct"), final_flops=summary["final_flops_frac"],
               cpu_s=cpu, wall_s=time.perf_counter() - wall0,
               select_cpu_s=(marks["recovery"] - cpu0) if "recovery" in marks else None,
               group_sizes=[g.size for g in groups],
               group_counts=[int(tr.masks[g.id].sum()) for g in groups] if tr.masks is not None else None,
               steps=tr.state.step, torch=torch.__version__, threads=torch.get_num_threads())
    with open(cfg["out"] + ".record.json", "w") as f:
        json.dump(rec, f)


def config(args, model, seed, budget, method, options, search, recovery, out):
    return dict(model=f"zoo:{model}", data="fashion-mnist", data_root=args.data_root, method=method, keep=budget,
                budget="flops", epochs=search, finetune_epochs=recovery, batch_size=128, lr=RECOVERY_LR,
                finetune_lr=RECOVERY_LR if search > 0 else None, compile=False, seed=seed, out=out,
                init=os.path.join(dense_dir(args, model, seed), "model.safetensors"), method_options=options)


def current(rec: dict, cfg: dict) -> bool:
    """Whether a record ran what ``cfg`` asks for now: the same method options and search
    epochs (the pilot's choice may have changed) and, within 5 %, the same recovery epochs (an equal-time run
    follows the default's time)."""
    epochs = cfg["finetune_epochs"]
    return (rec.get("options") == cfg["method_options"] and rec["search_epochs"] == cfg["epochs"]
            and abs(rec["recovery_epochs"] - epochs) <= 0.05 * epochs)


def supersede(args, found: list) -> None:
    """Moves records that no longer match what a stage runs to ``OUT/stale.jsonl``, out of the tables."""
    if not found:
        return
    path = os.path.join(args.out, "records.jsonl")
    recs = records(path)
    with open(os.path.join(args.out, "stale.jsonl"), "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs if r in found)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs if r not in found)
    print(f"superseded (options or recovery epochs changed): {[r['label'] for r in found]}", flush=True)


def run(args, rec_key: dict, cfg: dict):
    path = os.path.join(args.out, "records.jsonl")
    found = find(records(path), **rec_key)
    if found and current(found[0], cfg):
        return found[0]
    supersede(args, found)
    print(f"== {rec_key} {time.strftime('%H:%M:%S')}", flush=True)
    rec = run_child(__file__, {"config": cfg, "record": rec_key}, cfg["out"], str(rec_key))
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


# ----------------------------------------------------------------------------- stages

def stage_dense(args):
    for seed in args.seeds:
        for model in args.models:
            out = dense_dir(args, model, seed)
            if os.path.isfile(os.path.join(out, "model.safetensors")):
                continue
            resume = os.path.isfile(os.path.join(out, "last.pt"))  # an interrupted run continues from its checkpoint
            if os.path.isdir(out) and not resume:
                shutil.rmtree(out)
            print(f"== dense {model} seed {seed}{' (resumed)' if resume else ''} {time.strftime('%H:%M:%S')}", flush=True)
            code = ("import sys, torch; torch.set_flush_denormal(True); from fxsparse.cli import main; "
                    "sys.exit(main(sys.argv[1:]))")
            cmd = [sys.executable, "-c", code, "train", "--model", f"zoo:{model}", "--method", "dense", "--epochs",
                   str(args.dense_epochs), "--finetune-epochs", "0", "--lr", "0.05", "--no-compile", "--threads", "1",
                   "--seed", str(seed), "--out", out, "--no-progress"]
            if args.data_root:
                cmd += ["--data-root", args.data_root]
            if resume:
                cmd.append("--resume")
            if subprocess.call(cmd) != 0:
                raise SystemExit(f"dense training of {model} seed {seed} failed")


def need_dense(args, model, seed) -> bool:
    ok = os.path.isfile(os.path.join(dense_dir(args, model, seed), "model.safetensors"))
    if not ok:
        print(f"skip {model} seed {seed}: no trained model yet (run the dense stage)", flush=True)
    return ok


def stage_pilot(args):
    model, seed, budget = args.pilot_model, args.seeds[0], args.budgets[0]
    if not need_dense(args, model, seed):
        return
    for label, opts in VRPGE_VARIANTS.items():
        if args.only and label not in args.only:
            continue
        out = os.path.join(args.out, "pilot", f"{label}_{model}_s{seed}_b{budget}")
        run(args, dict(stage="pilot", label=label, model=model, seed=seed, budget=budget),
            config(args, model, seed, budget, "vrpge", opts, VARIANT_SEARCH.get(label, SEARCH_EPOCHS), 1.0, out))


def table_methods():
    return {**METHODS, DEFAULT: ("vrpge", VRPGE_VARIANTS[VRPGE_CHOSEN], VARIANT_SEARCH.get(VRPGE_CHOSEN, SEARCH_EPOCHS))}


def stage_table(args):
    methods = table_methods()
    labels = [m for m in methods if not args.only or m in args.only]
    for budget in args.budgets:
        for seed in args.seeds:
            for model in args.models:
                if not need_dense(args, model, seed):
                    continue
                for label in labels:
                    method, opts, search = methods[label]
                    key = dict(model=model, seed=seed, budget=budget)
                    out = os.path.join(args.out, "table", f"{label}_{model}_s{seed}_b{budget}")
                    cfg = config(args, model, seed, budget, method, opts, search, 1.0, out)
                    path = os.path.join(args.out, "records.jsonl")
                    pilot = find(records(path), stage="pilot", label=VRPGE_CHOSEN, **key)
                    done = find(records(path), stage="table", label=label, **key)
                    if label == DEFAULT and pilot and not (done and current(done[0], cfg)):
                        supersede(args, done)
                        with open(path, "a") as f:  # the same run: not run twice
                            f.write(json.dumps(dict(pilot[0], stage="table", label=label, from_pilot=True)) + "\n")
                        continue
                    run(args, dict(stage="table", label=label, **key), cfg)


def stage_wall(args):
    """Recovery at the default's total CPU time: epochs = 1 + (T_default - T_method) / (time per recovery epoch)."""
    methods = table_methods()
    path = os.path.join(args.out, "records.jsonl")
    for budget in args.budgets:
        for seed in args.seeds:
            for model in args.models:
                ref = find(records(path), stage="table", label=DEFAULT, model=model, seed=seed, budget=budget)
                if not ref:
                    continue
                for label in methods:
                    if label == DEFAULT or (args.only and label not in args.only):
                        continue
                    one = find(records(path), stage="table", label=label, model=model, seed=seed, budget=budget)
                    if not one or one[0]["select_cpu_s"] is None:
                        continue
                    one = one[0]
                    per_epoch = (one["cpu_s"] - one["select_cpu_s"]) / one["recovery_epochs"]
                    epochs = one["recovery_epochs"] + (ref[0]["cpu_s"] - one["cpu_s"]) / per_epoch
                    epochs = max(0.05, round(epochs, 3))
                    method, opts, search = methods[label]
                    out = os.path.join(args.out, "wall", f"{label}_{model}_s{seed}_b{budget}")
                    run(args, dict(stage="wall", label=label, model=model, seed=seed, budget=budget),
                        config(args, model, seed, budget, method, opts, search, epochs, out))


# ----------------------------------------------------------------------------- report

def mean_se(values):
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan"), 0
    m = statistics.mean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return m, se, len(values)


def fmt(values):
    m, se, n = mean_se(values)
    if n == 0:
        return ""
    return f"{m:.2f} ± {se:.2f}" if n > 1 else f"{m:.2f}"


def rank_corr(rows):
    import torch

    from fxsparse.methods.vrpge import spearman

    pairs = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:]]
    vals = [spearman(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)) for a, b in pairs]
    vals = [v for v in vals if v == v]
    return statistics.mean(vals) if vals else float("nan")


def report(args):
    recs = records(args.records or os.path.join(args.out, "records.jsonl"))
    dense = {}
    for model in MODELS:
        accs = []
        for seed in range(5):
            p = os.path.join(dense_dir(args, model, seed), "summary.json")
            if os.path.isfile(p):
                with open(p) as f:
                    accs.append(json.load(f)["test_acc_pct"])
        dense[model] = accs or [r["test_acc"] for r in recs if r["stage"] == "dense" and r["model"] == model]
    print("## trained dense models (Fashion-MNIST test accuracy %, mean ± s.e. over seeds)\n")
    print("| model | seeds | accuracy |\n|---|---|---|")
    for model, accs in dense.items():
        if accs:
            print(f"| {model} | {len(accs)} | {fmt(accs)} |")
    for model in MODELS:
        pilot = [r for r in recs if r["stage"] == "pilot" and r["model"] == model]
        if not pilot:
            continue
        r0 = pilot[0]
        print(f"\n## pilot: VR-PGE on trained weights ({model}, seed {r0['seed']}, FLOPs {r0['budget']})\n")
        print("| variant | after search % | after 1 epoch % | search CPU s | total CPU s |\n|---|---|---|---|---|")
        for r in pilot:
            print(f"| {r['label']} | {r['oneshot_acc']:.2f} | {r['test_acc']:.2f} | {r['select_cpu_s']:.0f} | {r['cpu_s']:.0f} |")
    for budget in sorted({r["budget"] for r in recs if r["stage"] == "table"}):
        for model in MODELS:
            rows = [r for r in recs if r["stage"] == "table" and r["budget"] == budget and r["model"] == model]
            if not rows:
                continue
            allocations = []
            print(f"\n## {model}, FLOPs budget {budget} (mean ± s.e. over seeds; dense {fmt(dense[model])} %)\n")
            print("| method | seeds | one-shot % | 1 epoch % | equal time % (epochs) | select CPU s | total CPU s "
                  "| FLOPs | allocation rank corr. |\n|---|---|---|---|---|---|---|---|---|")
            for label in table_methods():
                rs = [r for r in rows if r["label"] == label]
                if not rs:
                    continue
                wall = [r for r in recs if r["stage"] == "wall" and r["budget"] == budget and r["model"] == model
                        and r["label"] == label]
                if label == DEFAULT:
                    wall = rs
                eq = f"{fmt([r['test_acc'] for r in wall])} ({statistics.mean(r['recovery_epochs'] for r in wall):.2f})" \
                    if wall else ""
                fracs = [[c / n for c, n in zip(r["group_counts"], r["group_sizes"])] for r in rs if r["group_counts"]]
                allocations.extend((label, r["seed"], fr) for r, fr in zip([r for r in rs if r["group_counts"]], fracs))
                print(f"| {label} | {len(rs)} | {fmt([r['oneshot_acc'] for r in rs])} | {fmt([r['test_acc'] for r in rs])} "
                      f"| {eq} | {statistics.mean(r['select_cpu_s'] or 0 for r in rs):.0f} "
                      f"| {statistics.mean(r['cpu_s'] for r in rs):.0f} | {statistics.mean(r['final_flops'] for r in rs):.3f} "
                      f"| {rank_corr(fracs):.2f} |")
            print("\nkept fraction per prunable group (group order of `fxsparse analyze`), per method and seed:\n")
            for label, seed, fr in allocations:
                print(f"- {label} s{seed}: " + " ".join(f"{v:.2f}" for v in fr))


def snapshot(args):
    """The records with the dense models' accuracies, into one file that the report reads alone
    (``--records``): what the README's tables come from."""
    recs = [r for r in records(os.path.join(args.out, "records.jsonl")) if r["stage"] != "dense"]
    for model in MODELS:
        for seed in range(5):
            p = os.path.join(dense_dir(args, model, seed), "summary.json")
            if os.path.isfile(p):
                with open(p) as f:
                    summary = json.load(f)
                recs.append(dict(stage="dense", model=model, seed=seed, test_acc=summary["test_acc_pct"],
                                 wall_s=summary["wall_s"], epochs=summary["epochs"]))
    target = args.records or os.path.join(os.path.dirname(os.path.abspath(__file__)), "compress_records.jsonl")
    with open(target, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    print(f"wrote {len(recs)} records to {target}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["dense", "pilot", "table", "wall", "report", "snapshot"])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.25])
    p.add_argument("--only", nargs="*", help="labels to run (default: all)")
    p.add_argument("--dense-epochs", type=float, default=2.0)
    p.add_argument("--pilot-model", default="resnet20")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="runs/compress")
    p.add_argument("--records", default=None, help="report: the records file (default OUT/records.jsonl; the "
                   "README's tables: benchmarks/compress_records.jsonl)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    {"dense": stage_dense, "pilot": stage_pilot, "table": stage_table, "wall": stage_wall, "report": report,
     "snapshot": snapshot}[args.stage](args)


if __name__ == "__main__":
    main()
