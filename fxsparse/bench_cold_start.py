"""``fxsparse bench cold-start``: the time to the first training step from an empty compile cache,
each step kind in a fresh process (what is measured: ``fxsparse bench cold-start --help``,
:data:`fxsparse.bench_args.COLD_START_HELP`). The parent process starts one child per variant
(``fxsparse bench cold-start --child VARIANT``) with an empty inductor cache and prints its
record; the child builds the variant and times its first step (:func:`first_step`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

# torch._dynamo's compile-time phases reported: graph lowering, code generation, the C++ compiles
PHASES = ("OutputGraph.call_user_compiler", "GraphLowering.run", "GraphLowering.codegen", "compile_file",
          "async_compile.wait")


def first_step(model_name: str, variant: str, batch: int, threads: int) -> dict:
    """Builds ``variant`` of the zoo model and times its first step (it compiles), in this
    process: {build_s, first_step_s (wall), first_step_cpu_s (this process's CPU time and its
    compile workers'), phases (seconds per :data:`PHASES` entry)}."""
    import resource
    import warnings

    import torch
    import torch.nn.functional as F
    from torch._dynamo.utils import compile_times
    from torch._inductor.async_compile import shutdown_compile_workers

    import fxsparse
    from fxsparse import zoo

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
    shutdown_compile_workers()  # the workers' CPU time is counted once they have exited
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    times = {}
    for line in compile_times(repr="str", aggregate=True).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in PHASES:
            times[parts[0]] = float(parts[1])
    return {"build_s": built - start, "first_step_s": done - built, "phases": times,
            "first_step_cpu_s": cpu + workers.ru_utime + workers.ru_stime}


def in_fresh_process(model_name: str, variant: str, batch: int, threads: int) -> dict:
    """:func:`first_step` in a child process with an empty inductor cache of its own."""
    with tempfile.TemporaryDirectory(prefix="fxsparse-cold-") as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        out = subprocess.run([sys.executable, "-m", "fxsparse", "bench", "cold-start", "--model", model_name,
                              "--batch", str(batch), "--threads", str(threads), "--child", variant],
                             env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"cold-start child {variant} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_cold_start(args) -> dict:
    """The bench of the parsed ``args`` (:func:`fxsparse.bench_args.parse_cold_start_args`):
    {variant: record}, printed as each comes; with ``--child``, this process is the child."""
    if args.child:
        record = first_step(args.model, args.child, args.batch, args.threads)
        print(json.dumps(record))
        return {args.child: record}
    print(f"{args.model}, batch {args.batch}, {args.threads} threads, each variant in a fresh process, empty cache",
          flush=True)
    results = {}
    for variant in args.variants:
        r = results[variant] = in_fresh_process(args.model, variant, args.batch, args.threads)
        phases = ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items())
        print(f"  {variant:22s} build {r['build_s']:6.1f} s, first step {r['first_step_s']:6.1f} s (CPU "
              f"{r['first_step_cpu_s']:6.1f} s)  ({phases})", flush=True)
    if "dense" in results:
        base = results["dense"]["first_step_cpu_s"]
        print("CPU time of the first step / dense: " + ", ".join(
            f"{k} {r['first_step_cpu_s'] / base:.2f}x" for k, r in results.items() if k != "dense"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return results
