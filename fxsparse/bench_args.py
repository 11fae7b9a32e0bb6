"""Training-step time of dense vs sparse execution, measured side by side in one run.

    fxsparse bench [--models vgg11_bn resnet20] [--batch 64] [--keep 0.5] [--steps 10]
                   [--precision fp32 bf16] [--variants dense sparse exported ...] [--json out.json]
    fxsparse bench --models llama_gqa mixtral_moe --variants dense sparse exported [--seq 256]
    (also: fxsparse bench step-time ..., python benchmarks/step_time.py ...)
    fxsparse bench cold-start --help: the time to the first step from an empty compile cache
    fxsparse bench phases --help: where the time of one sparse step goes, phase by phase

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
# This module: `fxsparse bench`'s arguments, of each subcommand, its docstring the step-time
# bench's help; torch-free, so that `fxsparse bench ... --help` is fast. The benches themselves:
# fxsparse/bench.py (step time), bench_cold_start.py, bench_phases.py.
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
    _at_least_one(parser, args, ("steps", "block", "batch", "threads", "seq"))
    _check_seq(parser, args.seq)
    _check_keep(parser, args.keep)
    _check_models(parser, "--models", args.models, decoders=True)
    return args


COLD_START_HELP = """Time to the first training step from a cold compile cache, per step kind, each in a
fresh process with an empty inductor cache: dense compiled, sparse compiled with static
capacities (exact counts), sparse compiled with dynamic capacities (both as a short run compiles
them: forward + backward only), the same with its indexed kernels compiled too
(``compile_update=True``: the gather and the update, as a long run does), and the exported model
compiled. Also where the compile time goes (torch._dynamo's ``compile_times``: graph
lowering vs the C++ kernel compiles), and the CPU time of the first step (the process's and its
compile workers'): on a shared machine the wall times follow the load, the CPU times much less.

    fxsparse bench cold-start [--model resnet20] [--batch 8] [--threads 2] [--variants ...]

Slow by design (every variant compiles from scratch: minutes on a 2-core CPU)."""
COLD_START_VARIANTS = ("dense", "sparse-static", "sparse-dynamic", "sparse-dynamic-indexed", "exported")

PHASES_HELP = """Where the time of one compiled sparse training step goes, phase by phase.

    fxsparse bench phases [--model vgg11_bn] [--batch 64] [--keep 0.5] [--steps 12]
                          [--capacity exact|dynamic] [--seq 256]

``--model``: a zoo CNN or one of the step-time bench's decoders (``mixtral_moe``, ``llama_gqa``:
batch 4 x ``--seq`` tokens, the causal-LM loss).

Runs ``SparseModel.make_train_step``'s step (SGD momentum 0.9, weight decay 5e-4, random
masks of exactly round(keep x size) channels per group; static capacities, or the default
dynamic ones with ``--capacity dynamic``) with its ``on_phase`` hook, and prints the median
milliseconds of each phase: setting the masks, the per-step gather indices, the gather of
kept weights, the compiled forward, the backward, the compact update (arguments + compiled
kernel), and the write-back of BN statistics. Next to them, timed in the same rounds, the same
phases of the exported model for one such mask (compiled forward, backward, torch.optim.SGD),
and whole steps of both (the real ``make_train_step``): per-round ratios, which the machine's
drift does not move."""

# subcommand -> (the module that runs it, its function of the parsed arguments); no subcommand: step time
SUBCOMMANDS = {"step-time": ("fxsparse.bench", "run_bench"),
               "cold-start": ("fxsparse.bench_cold_start", "run_cold_start"),
               "phases": ("fxsparse.bench_phases", "run_phases")}


def parse_command(argv) -> tuple[str, argparse.Namespace]:
    """(subcommand, its parsed arguments) of ``fxsparse bench ARGV``: ``cold-start``, ``phases``,
    else ``step-time`` (also without its name: ``fxsparse bench --models ...``)."""
    argv = list(argv)
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "step-time"
    parse = {"step-time": parse_args, "cold-start": parse_cold_start_args, "phases": parse_phases_args}[command]
    return command, parse(argv)


def parse_cold_start_args(argv=None) -> argparse.Namespace:
    """``fxsparse bench cold-start``'s arguments."""
    parser = argparse.ArgumentParser(prog="fxsparse bench cold-start", description=COLD_START_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20", help="a zoo CNN (32x32 images, default %(default)s)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(COLD_START_VARIANTS), choices=COLD_START_VARIANTS,
                        metavar="VARIANT", help=f"(default all: {' '.join(COLD_START_VARIANTS)})")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--child", choices=COLD_START_VARIANTS, help=argparse.SUPPRESS)  # the measuring process
    args = parser.parse_args(argv)
    _at_least_one(parser, args, ("batch", "threads"))
    if args.child is None:  # the parent checked the name before it started the child
        _check_models(parser, "--model", [args.model], decoders=False)
    return args


def parse_phases_args(argv=None) -> argparse.Namespace:
    """``fxsparse bench phases``'s arguments."""
    parser = argparse.ArgumentParser(prog="fxsparse bench phases", description=PHASES_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg11_bn",
                        help="a zoo CNN (32x32 images) or a decoder of `fxsparse bench` (default %(default)s)")
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=None, help="default: 64 images, or 4 sequences of a decoder")
    parser.add_argument("--seq", type=int, default=256, help="a decoder's tokens per sequence (default %(default)s)")
    parser.add_argument("--steps", type=int, default=12, help="timed rounds (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--capacity", choices=["exact", "dynamic"], default="exact")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first, the first compiles (default %(default)s)")
    args = parser.parse_args(argv)
    _at_least_one(parser, args, ("batch", "steps", "threads", "warmup"))
    _check_seq(parser, args.seq)
    _check_keep(parser, args.keep)
    _check_models(parser, "--model", [args.model], decoders=True)
    return args


def _check_seq(parser, seq: int) -> None:
    if seq < 2:  # the causal-LM loss predicts each token from the ones before it
        parser.error(f"--seq must be at least 2 (the loss predicts each next token), got {seq}")


def _check_models(parser, flag: str, names, decoders: bool) -> None:
    """Each of ``names`` a zoo CNN (or, with ``decoders``, a decoder of
    :mod:`fxsparse.bench_models`). After ``--help``: the names need torch."""
    from fxsparse import zoo
    from fxsparse.bench_models import DECODERS

    known = sorted(set(zoo.names()) | (set(DECODERS) if decoders else set()))
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"{flag}: unknown model {', '.join(map(repr, unknown))}; choose from: {', '.join(known)}")


def _at_least_one(parser, args, flags) -> None:
    for flag in flags:
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")


def _check_keep(parser, keep) -> None:
    from fxsparse.analysis.masks import check_fraction  # imports torch: the help above needs none

    try:
        check_fraction(keep, "--keep")
    except ValueError as err:
        parser.error(str(err))
