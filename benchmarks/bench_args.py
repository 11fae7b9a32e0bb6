"""What the benchmark scripts share: the model/size/thread flags and a seeded, threaded start."""
import argparse

import torch


def parser(doc: str, *, model: str, keep: float, batch: int, steps: int, threads: int = 2) -> argparse.ArgumentParser:
    """An argument parser with the flags every step benchmark takes, at this script's defaults."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=model)
    p.add_argument("--keep", type=float, default=keep)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--threads", type=int, default=threads)
    return p


def start(args, seed: int = 0) -> None:
    """Torch threads and the global seed, before anything is built."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(seed)


def records(path: str) -> list:
    """The JSON records of a resumable experiment (one per line; none yet: [])."""
    import json
    import os

    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_child(script: str, spec: dict, out: str, what: str) -> dict:
    """Run ``script --child OUT.spec.json`` in a fresh process (one experiment run, its own
    threads and memory) and return the record it wrote to ``OUT.record.json``, with the
    process's wall time added as ``process_s``."""
    import json
    import os
    import subprocess
    import sys
    import time

    path = out + ".spec.json"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(spec, f)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(script), "--child", path])
    if proc.returncode != 0:
        raise SystemExit(f"run {what} failed (exit {proc.returncode})")
    with open(out + ".record.json") as f:
        rec = json.load(f)
    rec["process_s"] = time.perf_counter() - t0
    return rec
