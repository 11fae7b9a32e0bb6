"""Time to the first training step from a cold compile cache, per step kind, each in a
fresh process with an empty inductor cache: dense compiled, sparse compiled with static
capacities (exact counts), sparse compiled with dynamic capacities (both as a short run compiles
them: forward + backward only), the same with its indexed kernels compiled too
(``compile_update=True``: the gather and the update, as a long run does), and the exported model
compiled. Also where the compile time goes (torch._dynamo's ``compile_times``: graph
lowering vs the C++ kernel compiles), and the CPU time of the first step (the process's and its
compile workers'): on a shared machine the wall times follow the load, the CPU times much less.

    python benchmarks/cold_start.py [--model resnet20] [--batch 8] [--threads 2]

Slow by design (every variant compiles from scratch: minutes on a 2-core CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

VARIANTS = ("dense", "sparse-static", "sparse-dynamic", "sparse-dynamic-indexed", "exported")
PHASES = ("OutputGraph.call_user_compiler", "GraphLowering.run", "GraphLowering.codegen", "compile_file",
          "async_compile.wait")


def first_step(model_name: str, variant: str, batch: int, threads: int) -> dict:
    """Runs in the child process: builds the variant, times its first step."""
    import resource
    import warnings

    import torch
    import torch.nn.functional as F

    import fxsparse
    from fxsparse import zoo
    from torch._dynamo.utils import compile_times

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = zoo.create(model_name).train()
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    start = time.perf_counter()
    if variant in ("dense", "exported"):
        if variant == "exported":
            graph = fxsparse.analyze(model, x)
            model = fxsparse.export(model, graph, fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(1)))
            model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        compiled = torch.compile(model, dynamic=False)
        built, cpu = time.perf_counter(), time.process_time()
        F.cross_entropy(compiled(x), y).backward()
        opt.step()
    else:
        capacity = "exact" if variant == "sparse-static" else "dynamic"
        sp = fxsparse.compile(model, x, keep=0.5, capacity=capacity, compile_update=variant.endswith("-indexed"))
        step = sp.make_train_step(F.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
        sp.train()
        sp.masks = fxsparse.random_keep(sp.channel_graph, 0.5, sp.generator)
        built, cpu = time.perf_counter(), time.process_time()
        step(x, y)
    done, cpu = time.perf_counter(), time.process_time() - cpu
    from torch._inductor.async_compile import shutdown_compile_workers

    shutdown_compile_workers()  # the workers' CPU time is counted once they have exited
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    times = {}
    for line in compile_times(repr="str", aggregate=True).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in PHASES:
            times[parts[0]] = float(parts[1])
    return {"build_s": built - start, "first_step_s": done - built, "phases": times,
            "first_step_cpu_s": cpu + workers.ru_utime + workers.ru_stime}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(first_step(args.model, args.child, args.batch, args.threads)))
        return
    print(f"{args.model}, batch {args.batch}, {args.threads} threads, each variant in a fresh process, empty cache")
    for variant in args.variants:
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
            out = subprocess.run([sys.executable, __file__, "--model", args.model, "--batch", str(args.batch),
                                  "--threads", str(args.threads), "--child", variant],
                                 env=env, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        phases = ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items())
        print(f"  {variant:15s} build {r['build_s']:6.1f} s, first step {r['first_step_s']:6.1f} s (CPU "
              f"{r['first_step_cpu_s']:6.1f} s)  ({phases})", flush=True)


if __name__ == "__main__":
    main()
