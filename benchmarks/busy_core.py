"""Training steps on a machine where another process holds a core: torch's default threads
against ``fxsparse train``'s thread policy (``fxsparse/training/threads.py``: threads from the
CPUs not busy with other work, ``OMP_WAIT_POLICY=PASSIVE`` where CPUs are busy).

Each measurement runs in a fresh process (libgomp reads its environment once, when torch
loads it): ``default`` imports torch as it is; ``policy`` runs the policy before torch's
import, as the CLI does. Both time ``--steps`` eager training steps (after 3 warm-up steps)
of a zoo model, the sparse step of ``fxsparse.compile(..., compile=False)`` at keep 0.5 with
fresh Bernoulli masks each step (``--step dense``: the plain model), wall and CPU time
(CPU time: this process's, all its threads). Conditions: ``idle`` (nothing started here) and
``busy`` (a process spinning on the last CPU of this process's set for the whole
measurement). Fair only on an otherwise idle machine: the policy measures what is really
busy, and an ``idle`` run on a busy machine is not idle.

    python benchmarks/busy_core.py [--model lenet5] [--batch 128] [--steps 40] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def child(mode: str, model_name: str, batch: int, steps: int, step_kind: str) -> dict:
    """Runs in the measured process."""
    plan = None
    if mode == "policy":
        from fxsparse.training import threads  # imports no torch

        plan = threads.plan(None)
    import torch
    import torch.nn.functional as F

    import fxsparse
    from fxsparse import zoo

    if plan is not None:
        threads.apply(plan)
    info = zoo.info(model_name)
    torch.manual_seed(0)
    model = zoo.create(model_name, in_chans=info.default_input[0]).train()
    x = torch.randn(batch, *info.default_input)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if step_kind == "sparse":
        sp = fxsparse.compile(model, x, keep=0.5, compile=False)
        train_step = sp.make_train_step(F.cross_entropy, opt)

        def step():
            sp.sample_masks(0.5)
            return train_step(x, y)
    else:
        def step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

    for _ in range(3):
        step()
    times, c0, t0 = [], os.times(), time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    wall, c1 = time.perf_counter() - t0, os.times()
    times.sort()
    return {"mode": mode, "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY",
            "default"), "busy_cpus_seen": None if plan is None else plan.busy_cpus, "wall_s": wall,
            "cpu_s": (c1.user - c0.user) + (c1.system - c0.system), "median_step_s": times[len(times) // 2]}


def hold_a_core():
    """A process spinning on the last CPU of this process's set."""
    cpu = sorted(os.sched_getaffinity(0))[-1]
    proc = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    time.sleep(1.0)  # running, and seen by a policy that measures now
    return proc


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lenet5")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--step", choices=["sparse", "dense"], default="sparse")
    p.add_argument("--conditions", nargs="+", choices=["idle", "busy"], default=["idle", "busy"])
    p.add_argument("--json", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.model, args.batch, args.steps, args.step)))
        return
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    rows = []
    print(f"{args.model}, batch {args.batch}, {args.steps} {args.step} steps (eager), CPUs {sorted(os.sched_getaffinity(0))}, "
          f"load average before {os.getloadavg()[0]:.2f}")
    for condition in args.conditions:
        holder = hold_a_core() if condition == "busy" else None
        try:
            for mode in ("default", "policy"):
                r = subprocess.run([sys.executable, __file__, "--child", mode, "--model", args.model, "--batch",
                                    str(args.batch), "--steps", str(args.steps), "--step", args.step],
                                   env=env, capture_output=True, text=True, timeout=1800)
                if r.returncode:
                    sys.exit(r.stderr)
                row = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[7:])
                row["condition"] = condition
                rows.append(row)
                seen = "" if row["busy_cpus_seen"] is None else f", busy CPUs seen {row['busy_cpus_seen']:.2f}"
                print(f"{condition:5s} {mode:8s} threads {row['threads']}, OMP_WAIT_POLICY {row['omp_wait_policy']}"
                      f"{seen}: wall {row['wall_s']:.2f} s, CPU {row['cpu_s']:.2f} s, median step "
                      f"{1000 * row['median_step_s']:.1f} ms", flush=True)
        finally:
            if holder is not None:
                holder.kill()
                holder.wait()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
