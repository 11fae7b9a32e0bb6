"""Real-data comparison on Fashion-MNIST (the full 60k/10k set), all runs in one process,
side by side: same model, seed, epochs and data order.

    python benchmarks/fashion_mnist.py                       # issue #5: dense / VR-PGE / baselines
    python benchmarks/fashion_mnist.py --suite methods       # issue #6: every registered method

Each run goes through ``fxsparse.training.trainer.Trainer`` (what ``fxsparse train`` runs), so the
wall clock is the whole run: compilation, search, final-mask choice, fine-tune, evaluation.
Writes ``OUT/results.json`` and prints a table (markdown with ``--markdown``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from tabulate import tabulate

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fxsparse.training.trainer import TrainConfig, Trainer  # noqa: E402

# name: (method, keep, budget, extra config)
SUITES = {
    "vrpge": [
        ("dense", "dense", 1.0, "channels", {}),
        ("vrpge keep 0.5", "vrpge", 0.5, "channels", {}),
        ("vrpge flops 0.25", "vrpge", 0.25, "flops", {}),
        ("random channels flops 0.25", "random", 0.25, "flops", {}),
        ("L1-filter at init flops 0.25", "l1_filter", 0.25, "flops", {}),
    ],
    "methods": [
        ("dense", "dense", 1.0, "channels", {}),
        ("vrpge keep 0.5", "vrpge", 0.5, "channels", {}),
        ("vrpge keep 0.5, 2 fresh score forwards", "vrpge", 0.5, "channels", {"experimental": {"reuse_loss": False}}),
        ("vrpge keep 0.5, two-sample weight averaging", "vrpge", 0.5, "channels", {"weight_average": True}),
        ("random channels 0.5", "random", 0.5, "channels", {}),
        ("L1-filter 0.5", "l1_filter", 0.5, "channels", {}),
        ("SNIP channels 0.5", "snip", 0.5, "channels", {}),
        ("GraSP channels 0.5", "grasp", 0.5, "channels", {}),
        ("SynFlow channels 0.5", "synflow", 0.5, "channels", {}),
        ("network slimming 0.5", "slimming", 0.5, "channels", {}),
        ("magnitude (weights) 0.1", "magnitude", 0.1, "channels", {"level": "weight"}),
        ("SNIP (weights) 0.1", "snip", 0.1, "channels", {"level": "weight"}),
        ("SET 0.1", "set", 0.1, "channels", {}),
        ("RigL 0.1", "rigl", 0.1, "channels", {}),
        ("DropBack 0.1", "dropback", 0.1, "channels", {}),
        # the DropBack paper's own setting: MLP 784-100-100-10, SGD lr 0.4, batch 100
        ("MLP dense (DropBack paper setting)", "dense", 1.0, "channels",
         {"model": "zoo:mlp_784_100_100_10", "lr": 0.4, "batch_size": 100, "momentum": 0.0, "weight_decay": 0.0}),
        ("MLP DropBack 0.1 (paper setting)", "dropback", 0.1, "channels",
         {"model": "zoo:mlp_784_100_100_10", "lr": 0.4, "batch_size": 100, "momentum": 0.0, "weight_decay": 0.0}),
    ],
}


def run_one(label, method, keep, budget, extra, args) -> dict:
    out = os.path.join(args.out, label.replace(" ", "_").replace(",", ""))
    cfg = dict(model=args.model, data="fashion-mnist", data_root=args.data_root, method=method, keep=keep,
               budget=budget, epochs=args.epochs, finetune_epochs=args.finetune_epochs, batch_size=args.batch_size,
               lr=args.lr, compile=not args.no_compile, seed=args.seed, limit_batches=args.limit_batches, out=out)
    method_options = {}
    for k, v in extra.items():
        if k in TrainConfig.__dataclass_fields__:
            cfg[k] = v
        else:
            method_options[k] = v
    if method not in ("vrpge", "dense") and "level" not in extra and method not in ("set", "rigl", "dropback"):
        method_options.setdefault("budget", budget)
    cfg["method_options"] = method_options
    if os.path.exists(os.path.join(out, "last.pt")):
        import shutil

        shutil.rmtree(out)
    # each run in its own process: its peak RSS is its own, and no state leaks between runs
    spec = os.path.join(out + ".spec.json")
    os.makedirs(os.path.dirname(spec), exist_ok=True)
    with open(spec, "w") as f:
        json.dump({"config": cfg, "label": label, "threads": args.threads}, f)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", spec])
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run {label!r} failed (exit {proc.returncode})")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(out, "peak_rss.json")) as f:
        summary["peak_rss_mb"] = json.load(f)["peak_rss_mb"]
    summary["wall_total"] = wall  # the whole process: start-up, data loading, compile, train, eval, export
    summary["label"] = label
    return summary


def child(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(spec["threads"])
    label = spec["label"]
    Trainer(TrainConfig(**spec["config"]), log=lambda s: print(f"  [{label}] {s}", flush=True), progress=False).run()
    with open(os.path.join(spec["config"]["out"], "peak_rss.json"), "w") as f:
        json.dump({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, f)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="vrpge")
    p.add_argument("--only", nargs="*", help="labels (substrings) of the runs to do")
    p.add_argument("--model", default="zoo:vgg11_bn")
    p.add_argument("--data-root", default=None)
    # VR-PGE searches for a quarter of an epoch (the scores polarise within ~100 steps at
    # score lr 0.1) and fine-tunes the rest; single-phase methods train epochs + finetune-epochs
    p.add_argument("--epochs", type=float, default=0.25, help="search epochs (a fraction ends it mid-epoch)")
    p.add_argument("--finetune-epochs", type=float, default=2.75)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--limit-batches", type=int, default=None)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/fashion_mnist")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = [r for r in SUITES[args.suite] if not args.only or any(o in r[0] for o in args.only)]
    results = []
    for label, method, keep, budget, extra in runs:
        print(f"== {label}", flush=True)
        results.append(run_one(label, method, keep, budget, extra, args))
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"results_{args.suite}.json"), "w") as f:
            json.dump({"args": vars(args), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "results": results}, f, indent=1)
    rows = []
    for r in results:
        dense = next((d for d in results if d["method"] == "dense" and d["model"] == r["model"]), None)
        rows.append([r["label"], f"{r['test_acc_pct']:.2f}",
                     f"{r['test_acc_pct'] - dense['test_acc_pct']:+.2f}" if dense else "",
                     f"{r['train_tflop']:.1f}",
                     f"{dense['train_tflop'] / r['train_tflop']:.2f}x" if dense else "",
                     f"{r['wall_total']:.0f}", f"{dense['wall_total'] / r['wall_total']:.2f}x" if dense else "",
                     f"{r['final_flops_frac']:.3f}", r["params"], f"{r.get('peak_rss_mb', float('nan')):.0f}"])
    headers = ["run (vs the dense run of the same model)", "test acc %", "vs dense", "train TFLOP", "FLOPs saved", "wall s", "speed-up", "final FLOPs", "params",
               "peak RSS MB"]
    print(tabulate(rows, headers=headers, tablefmt="github" if args.markdown else "simple"))


if __name__ == "__main__":
    main()
