"""How long building a SparseModel takes before its first step, per phase: a ViT-H/14 from its
config (timm ``vit_huge_patch14_224``, random init; ``--depth`` layers, 32 in the real model),
one image 224x224, ``fxsparse.compile(model, x, compile=False)``.

    python benchmarks/archive/build_time.py [--depth 8] [--model timm|hf] [--profile]

Phases are exclusive (a phase's time excludes the phases timed inside it), so they add up to
the total; wall-clock and process CPU time (``time.process_time``: the machine may be shared).
"""
import argparse
import collections
import contextlib
import cProfile
import functools
import pstats
import time
import warnings

import torch

import fxsparse
import fxsparse.analysis.analyze as analyze_module
import fxsparse.rewrite.export as export_module
import fxsparse.step.capacity as capacity_module
import fxsparse.step.sparse as sparse_module
from fxsparse.passes import channel_propagation, masked_mixing, shape_prop, slice_channels
from fxsparse.rewrite import layout

# (owner, attribute, phase): the functions whose calls are timed
PHASES = [
    (analyze_module, "_capture", "capture (trace / torch.export)"),
    (shape_prop.ShapeProp, "call", "shape propagation"),
    (channel_propagation.ChannelPropagation, "call", "channel propagation + rules"),
    (analyze_module, "build_groups", "groups"),
    (capacity_module, "shape_free", "shape-free check (rest)"),
    (export_module, "_copy_graph", "export: copy of the graph"),
    (slice_channels.SliceChannels, "call", "export: slicing"),
    (export_module, "_own_parameters", "export: copies of unsliced params"),
    (export_module, "check_runs", "export: check forward"),
    (sparse_module, "check_runs", "capacity model: check forward"),
    (layout.Plan, "__init__", "Plan"),
    (masked_mixing.MaskMixingOps, "call", "masked mixing pass"),
    (layout.Plan, "dim_layout", "layouts (dim_layout)"),
    (sparse_module, "build_capacity_model", "capacity model build (rest)"),
]


class PhaseTimer:
    """Exclusive wall and CPU seconds per phase: a nested timed call is taken out of its caller's."""

    def __init__(self):
        self.wall, self.cpu = collections.Counter(), collections.Counter()
        self._stack = []  # [phase, wall of nested calls, cpu of nested calls]

    def wrap(self, fn, phase):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self._stack.append([phase, 0.0, 0.0])
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                dw, dc = time.perf_counter() - w, time.process_time() - c
                _, nested_w, nested_c = self._stack.pop()
                self.wall[phase] += dw - nested_w
                self.cpu[phase] += dc - nested_c
                if self._stack:
                    self._stack[-1][1] += dw
                    self._stack[-1][2] += dc
        return timed

    @contextlib.contextmanager
    def installed(self):
        saved = [(owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name))
                 for owner, name, _ in PHASES]
        try:
            for (owner, name, phase), (_, _, fn) in zip(PHASES, saved):
                setattr(owner, name, self.wrap(fn, phase))
            yield self
        finally:
            for owner, name, fn in saved:
                setattr(owner, name, fn)


def vit_huge(depth, kind):
    torch.manual_seed(0)
    if kind == "hf":
        import transformers

        config = transformers.ViTConfig(hidden_size=1280, num_hidden_layers=depth, num_attention_heads=16,
                                        intermediate_size=5120, image_size=224, patch_size=14)
        return transformers.ViTModel(config).eval()
    from fxsparse.zoo import import_timm

    return import_timm().create_model("vit_huge_patch14_224", pretrained=False, depth=depth).eval()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--model", choices=["timm", "hf"], default="timm")
    parser.add_argument("--profile", action="store_true", help="also print cProfile's top functions")
    args = parser.parse_args()
    model = vit_huge(args.depth, args.model)
    x = torch.randn(1, 3, 224, 224)
    params = sum(p.numel() for p in model.parameters())
    print(f"ViT-H/14 ({args.model}) depth {args.depth}: {params / 1e6:.0f}M parameters; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    profiler = cProfile.Profile() if args.profile else None
    with PhaseTimer().installed() as timer, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w, c = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        sparse = sparse_module.compile(model, x, compile=False)
        if profiler:
            profiler.disable()
        wall, cpu = time.perf_counter() - w, time.process_time() - c
    timer.wall["other"] = wall - sum(timer.wall.values())
    timer.cpu["other"] = cpu - sum(timer.cpu.values())
    print(f"{'phase':38s} {'wall s':>8s} {'cpu s':>8s}")
    for phase in [p for _, _, p in PHASES] + ["other"]:
        print(f"{phase:38s} {timer.wall[phase]:8.2f} {timer.cpu[phase]:8.2f}")
    print(f"{'total':38s} {wall:8.2f} {cpu:8.2f}")
    groups = sparse.channel_graph.groups
    print(f"{len(groups)} groups, {sum(g.prunable for g in groups)} prunable; capacity {sparse.capacity_mode}")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
