"""How many threads ``fxsparse train`` trains with, and how its OpenMP threads wait.

torch's default is a thread per core, and each op's parallel region ends when its slowest
thread is done. When another process keeps a core busy, the thread on that core runs only
when the scheduler gives it a slice, so every op waits for it, while the other threads spin
at the barrier (libgomp, torch's OpenMP on Linux, spins about 300000 times before it
sleeps), taking CPU time from the process that owns the busy core too. Issue #29: on 2
cores with one busy, the median search step took 0.76 s with 2 threads and 0.18 s with 1.

The policy, which the CLI applies before torch is first imported (libgomp reads its
environment once, when torch loads it):

* **threads**: ``--threads N``; else ``OMP_NUM_THREADS`` when set (torch's default then
  follows it); else the CPUs this process may run on (``os.sched_getaffinity``) less those
  busy with other work, measured over :data:`SAMPLE_S` from ``/proc/stat`` with this
  process's own CPU time left out; at least 1, at most torch's default (or the CPUs, where
  torch is not imported yet: ``apply`` caps it again). Where ``/proc/stat`` cannot be read
  (not Linux) it is torch's default.
* **OMP_WAIT_POLICY**: ``PASSIVE`` (a waiting thread sleeps at once instead of spinning) where
  the sample found at least half a CPU busy with other work and the user set no policy; on
  an idle machine libgomp's default stays (a short spin: the fastest hand-over between
  parallel regions when every core is free).

The choice is made once, at the start: a core that becomes busy later is not seen.
``--threads`` and ``OMP_WAIT_POLICY`` override it.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Optional

SAMPLE_S = 0.25  # how long the busy CPUs are measured (/proc/stat counts in 10 ms ticks)
BUSY_FOR_PASSIVE = 0.5  # CPUs busy with other work from which waiting threads sleep at once


@dataclasses.dataclass
class ThreadPlan:
    """What :func:`plan` decided before torch's import, and what :func:`apply` did after."""

    requested: Optional[int]          # --threads
    cpus: int                         # CPUs this process may run on
    busy_cpus: Optional[float]        # of those, busy with other work over the sample (None: not measured)
    omp_wait_policy: str              # as libgomp saw it when torch loaded: PASSIVE, ACTIVE or "default"
    omp_wait_policy_set_by: Optional[str]  # "fxsparse", "user" (the environment) or None (libgomp's default)
    threads: Optional[int] = None     # set by apply
    chosen_by: Optional[str] = None   # "--threads", "OMP_NUM_THREADS", "free CPUs" or "torch's default"
    torch_default: Optional[int] = None

    def record(self) -> dict:
        """The ``threads`` entry of summary.json."""
        return {"threads": self.threads, "chosen_by": self.chosen_by, "cpus": self.cpus,
                "busy_cpus": None if self.busy_cpus is None else round(self.busy_cpus, 2),
                "torch_default": self.torch_default, "omp_wait_policy": self.omp_wait_policy,
                "omp_wait_policy_set_by": self.omp_wait_policy_set_by}

    def describe(self) -> str:
        """One line for the start of the run."""
        if self.chosen_by == "--threads":
            why = f"--threads {self.threads}"
        elif self.chosen_by == "OMP_NUM_THREADS":
            why = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
        elif self.chosen_by == "free CPUs":
            why = (f"{self.cpus} CPUs, {self.busy_cpus:.1f} of them busy with other work; torch's default "
                   f"{self.torch_default}; --threads N sets another number")
        else:
            why = "torch's default"
        policy = {"fxsparse": "; OpenMP threads sleep while they wait (OMP_WAIT_POLICY=PASSIVE, as cores are busy)",
                  "user": f"; OMP_WAIT_POLICY={self.omp_wait_policy}"}.get(self.omp_wait_policy_set_by, "")
        return f"threads: {self.threads} ({why}){policy}"


def cpus() -> set:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def _cpu_ticks(which: set) -> Optional[dict]:
    """{cpu: (busy ticks, all ticks)} from /proc/stat, or None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    out = {}
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in which:
            continue
        # user nice system idle iowait irq softirq steal (guest time is inside user)
        v = [int(x) for x in fields[:8]] + [0] * max(0, 8 - len(fields))
        busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
        out[int(name[3:])] = (busy, busy + v[3] + v[4])
    return out if set(out) == set(which) else None


def _busy_cpus(which: set, seconds: float = SAMPLE_S) -> Optional[float]:
    """How many of the CPUs ``which`` other processes kept busy over ``seconds`` (this
    process's own CPU time left out); None where /proc/stat cannot be read."""
    before, own0, t0 = _cpu_ticks(which), os.times(), time.monotonic()
    if before is None:
        return None
    time.sleep(seconds)
    after, own1, t1 = _cpu_ticks(which), os.times(), time.monotonic()
    if after is None:
        return None
    busy = sum((after[c][0] - before[c][0]) / max(after[c][1] - before[c][1], 1) for c in which)
    own = (own1.user - own0.user + own1.system - own0.system) / max(t1 - t0, 1e-9)
    return min(float(len(which)), max(0.0, busy - own))


def _fixed_threads(requested: Optional[int], environ) -> Optional[int]:
    if requested:
        return requested
    try:
        return int(environ["OMP_NUM_THREADS"])
    except (KeyError, ValueError):
        return None


def plan(requested: Optional[int] = None, environ=None) -> ThreadPlan:
    """Measure the busy CPUs where the choice needs them, and set ``OMP_WAIT_POLICY=PASSIVE``
    in ``environ`` (default ``os.environ``) where they are busy, the user set no policy, and
    torch is not imported yet (afterwards libgomp would not read it)."""
    environ = os.environ if environ is None else environ
    which = cpus()
    torch_loaded = "torch" in sys.modules
    fixed = _fixed_threads(requested, environ)
    ceiling = fixed or (sys.modules["torch"].get_num_threads() if torch_loaded else len(which))
    user_policy = environ.get("OMP_WAIT_POLICY")
    may_set_policy = not user_policy and not torch_loaded and ceiling > 1  # one thread never waits for another
    busy = _busy_cpus(which) if (fixed is None and ceiling > 1) or may_set_policy else None
    set_by = "user" if user_policy else None
    if may_set_policy and busy is not None and busy >= BUSY_FOR_PASSIVE:
        environ["OMP_WAIT_POLICY"] = "PASSIVE"
        set_by = "fxsparse"
    policy = (environ.get("OMP_WAIT_POLICY") or "default").upper()
    return ThreadPlan(requested=requested, cpus=len(which), busy_cpus=busy, omp_wait_policy=policy,
                      omp_wait_policy_set_by=set_by)


def apply(p: ThreadPlan) -> ThreadPlan:
    """Import torch and set its thread count as the plan says; fills in ``threads``,
    ``chosen_by`` and ``torch_default`` (torch's count before this call)."""
    import torch

    p.torch_default = torch.get_num_threads()
    if p.requested:
        p.threads, p.chosen_by = p.requested, "--threads"
    elif _fixed_threads(None, os.environ) is not None:
        p.threads, p.chosen_by = p.torch_default, "OMP_NUM_THREADS"
    elif p.busy_cpus is None:
        p.threads, p.chosen_by = p.torch_default, "torch's default"
    else:
        free = p.cpus - p.busy_cpus
        p.threads, p.chosen_by = max(1, min(p.torch_default, math.floor(free + 0.5))), "free CPUs"
    torch.set_num_threads(p.threads)
    return p
