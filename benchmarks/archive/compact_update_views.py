"""The compact update reading through DLPack views (fxsparse.step.compact_update._read_view) against
reading the tensors it writes (`read_views = False`), and the exported model's eager SGD, phase by
phase in one process, rounds in alternating order: `OMP_NUM_THREADS=1 STEPS=16 python
benchmarks/archive/compact_update_views.py` (result: compact_update_views.txt)."""
import statistics, time, warnings, os, sys
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
import fxsparse
from fxsparse.bench_models import workload
from fxsparse.step.train_step import PHASES
STEPS = int(os.environ.get("STEPS", 12))
MODEL = os.environ.get("MODEL", "mixtral_moe")
work = workload(MODEL, 4, 256)
x, y, loss = work.inputs, work.target, work.loss
SP = ("masks",) + PHASES; EX = ("forward", "backward", "update")
clock = lambda: (time.perf_counter(), time.process_time())
def build_sparse(read_views, param_views=False):
    m = work.fresh()
    sp = fxsparse.compile(m, x, keep=0.5, capacity="exact")
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    step = sp.make_train_step(loss, opt); sp.train()
    step.update.read_views = read_views
    def new_masks(): sp.masks = fxsparse.random_keep(sp.channel_graph, 0.5, sp.generator)
    for _ in range(3): new_masks(); step(*x, y)
    def phases():
        t = [clock()]
        new_masks(); t.append(clock())
        step.on_phase = lambda p: t.append(clock())
        step(*x, y); step.on_phase = None
        return {k: (b[0]-a[0], b[1]-a[1]) for k, a, b in zip(SP, t, t[1:])}
    return sp, phases, lambda: (new_masks(), step(*x, y))
t0 = time.time()
variants = {}
sp, ph, whole = build_sparse(False); variants["sparse old"] = (ph, whole, SP)
_, ph, whole = build_sparse(True); variants["sparse new"] = (ph, whole, SP)

small = fxsparse.export(work.fresh(), sp.channel_graph, sp.masks).train()
sopt = torch.optim.SGD(small.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
sloss = torch.compile(lambda a, b: loss(small(*a), b))
def ex_step():
    sopt.zero_grad(set_to_none=True); sloss(x, y).backward(); sopt.step()
def ex_phases():
    t = [clock()]
    sopt.zero_grad(set_to_none=True); l = sloss(x, y); t.append(clock())
    l.backward(); t.append(clock())
    sopt.step(); t.append(clock())
    return {k: (b[0]-a[0], b[1]-a[1]) for k, a, b in zip(EX, t, t[1:])}
for _ in range(3): ex_step()
variants["exported"] = (ex_phases, ex_step, EX)
print(f"{MODEL}: all built in {time.time() - t0:.0f} s; {STEPS} rounds, order alternating", flush=True)
res = {k: {p: [] for p in v[2]} for k, v in variants.items()}
whole_t = {k: [] for k in variants}
for r in range(STEPS):
    order = list(variants) if r % 2 == 0 else list(variants)[::-1]
    for k in order:
        for p, v in variants[k][0]().items(): res[k][p].append(v)
    for k in order:
        a = clock(); variants[k][1](); b = clock()
        whole_t[k].append((b[0] - a[0], b[1] - a[1]))
med = lambda v, i: statistics.median(t[i] for t in v) * 1e3
print(f"{'phase':12s}" + "".join(f"{k + ' wall/cpu ms':>28s}" for k in variants))
for p in SP:
    print(f"{p:12s}" + "".join(f"{med(res[k][p], 0):14.2f}{med(res[k][p], 1):14.2f}" if p in res[k] else " " * 28 for k in variants))
print(f"{'whole step':12s}" + "".join(f"{med(whole_t[k], 0):14.2f}{med(whole_t[k], 1):14.2f}" for k in variants))
def ratio(a, b, i, src):
    return statistics.median(x[i] / y[i] for x, y in zip(src(a), src(b)))
for k in [v for v in variants if v != "exported"]:
    u = lambda v: res[v]["update"]
    print(f"{k}/exported: update per round wall {ratio(k, 'exported', 0, u):.3f}x cpu {ratio(k, 'exported', 1, u):.3f}x; "
          f"whole step per round wall {ratio(k, 'exported', 0, lambda v: whole_t[v]):.3f}x cpu {ratio(k, 'exported', 1, lambda v: whole_t[v]):.3f}x")
