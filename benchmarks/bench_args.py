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
