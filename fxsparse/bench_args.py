"""Training-step time of dense vs sparse execution, measured side by side in one run.

    fxsparse bench [--models vgg11_bn resnet20] [--batch 64] [--keep 0.5] [--steps 10]
                   [--precision fp32 bf16] [--variants dense sparse exported ...] [--json out.json]
    fxsparse bench --models llama_gqa mixtral_moe --variants dense sparse exported [--seq 256]
    (also: python benchmarks/step_time.py ...)

Models: CNNs of the zoo (32x32 images, 10 classes, cross-entropy; default batch 64), or
small transformers decoders written in fxsparse/bench_models.py (token ids, next-token
cross-entropy; default batch 4 of --seq tokens): llama_gqa (Llama-style, grouped-query
attention: 8 query heads over 2 KV heads) and mixtral_moe (Mixtral-style, top-2 of 4 experts);
llama_gqa_tiny / mixtral_moe_tiny check that the path runs.

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
# This module: `fxsparse bench`'s arguments, its docstring their help; torch-free, so that
# `fxsparse bench --help` is fast. The bench itself is fxsparse/bench.py.
from __future__ import annotations

import argparse

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


def parse_args(argv=None) -> argparse.Namespace:
    """``fxsparse bench``'s arguments; a bad one exits 2 naming the flag, before anything is built.
    Torch-free: ``fxsparse bench --help`` does not wait for torch."""
    parser = argparse.ArgumentParser(prog="fxsparse bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vgg11_bn", "resnet20", "resnet18_cifar"])
    parser.add_argument("--batch", type=int, default=None,
                        help="examples per step (default 64 for a CNN, 4 sequences for a decoder)")
    parser.add_argument("--seq", type=int, default=256, help="a decoder's tokens per sequence (default %(default)s)")
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
    for flag in ("steps", "block", "batch", "threads", "seq"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.seq < 2:  # the causal-LM loss predicts each token from the ones before it
        parser.error(f"--seq must be at least 2, got {args.seq}")
    from fxsparse.analysis.masks import check_fraction  # imports torch: the help above needs none

    try:
        check_fraction(args.keep, "--keep")
    except ValueError as err:
        parser.error(str(err))
    return args
