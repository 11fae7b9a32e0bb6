"""How long fxsparse.analyze takes on a ResNet-50 (224x224, batch 1): median of 5 runs after one warm-up.

    python benchmarks/analyze_speed.py
"""
import statistics
import time

import torch

import fxsparse
from fxsparse import zoo


def main():
    torch.manual_seed(0)
    model = zoo.create("resnet50", num_classes=1000).eval()
    x = torch.randn(1, 3, 224, 224)
    fxsparse.analyze(model, x)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        graph = fxsparse.analyze(model, x)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    with torch.no_grad():
        model(x)
    fwd = time.perf_counter() - t
    print(f"resnet50 224x224: analyze median {statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f}); "
          f"{len(graph)} groups, {len(graph.prunable_groups)} prunable; one eager forward {fwd:.2f} s; "
          f"torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
