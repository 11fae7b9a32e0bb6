"""Capacity alignment on CPU: the sparse step of VGG-11-BN with Bernoulli(0.5) masks and
capacity "auto", slot counts rounded to multiples of 1 (the CPU default) vs 16, timed
side by side (alternating order, 16 rounds, batch 64, 2 threads).

    python benchmarks/align_cpu.py
"""
import statistics, time, torch, torch.nn.functional as F, fxsparse, warnings
from fxsparse import zoo
warnings.filterwarnings("ignore")
torch.set_num_threads(2)
x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
def build(align):
    torch.manual_seed(0); m = zoo.create("vgg11_bn").train()
    sp = fxsparse.compile(m, x, keep=0.5, capacity="auto", align=align); sp.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    step = sp.make_train_step(F.cross_entropy, opt)
    def run(): sp.sample_masks(0.5); step(x, y)
    for _ in range(3): run()
    print("align", align, "caps", [c for c, p in zip(sp.plan.caps, sp.plan.prunable) if p], flush=True)
    return sp, run
vs = {a: build(a) for a in (1, 16)}
t = {a: [] for a in vs}
for r in range(16):
    for a in (vs if r % 2 == 0 else list(vs)[::-1]):
        s = time.perf_counter(); vs[a][1](); t[a].append(time.perf_counter() - s)
for a in vs: print("align", a, f"{statistics.median(t[a])*1e3:.1f} ms", "compilations", vs[a][0].compilations)
