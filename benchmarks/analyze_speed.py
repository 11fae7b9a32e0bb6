"""How long fxsparse.analyze takes: ResNet-50 (224x224, batch 1) and a 12-layer transformer
(GPT-2 small from its config, random weights: 12 layers, width 768, vocabulary 50257; 32 tokens); median of
5 runs after one warm-up, wall-clock and process CPU time.

    python benchmarks/analyze_speed.py [--models resnet50 gpt2_12] [--trace-first]

``--trace-first`` also times the transformer the way analyze captured it before it knew
``transformers`` models (symbolic tracing tried first; it always fails on them, then
torch.export), side by side in the same process.
"""
import argparse
import statistics
import time
import warnings
from unittest import mock

import torch

import fxsparse
import fxsparse.analysis.analyze as analyze_module
from fxsparse import zoo


def resnet50():
    return zoo.create("resnet50", num_classes=1000).eval(), (torch.randn(1, 3, 224, 224),)


def gpt2_12():
    import transformers

    config = transformers.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    model = transformers.GPT2LMHeadModel(config).eval()
    return model, (torch.randint(0, 50257, (1, 32), generator=torch.Generator().manual_seed(0)),)


MODELS = {"resnet50": resnet50, "gpt2_12": gpt2_12}


def timed(model, inputs, runs=5):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fxsparse.analyze(model, inputs)
        wall, cpu = [], []
        for _ in range(runs):
            t, c = time.perf_counter(), time.process_time()
            graph = fxsparse.analyze(model, inputs)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return graph, wall, cpu


def report(label, graph, wall, cpu):
    print(f"{label}: analyze median {statistics.median(wall):.2f} s wall (min {min(wall):.2f}, max {max(wall):.2f}), "
          f"{statistics.median(cpu):.2f} s CPU; {len(graph)} groups, {len(graph.prunable_groups)} prunable", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--trace-first", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    for name in args.models:
        model, inputs = MODELS[name]()
        report(name, *timed(model, inputs))
        if args.trace_first and name != "resnet50":
            with mock.patch.object(analyze_module, "is_transformers_model", lambda m: False):
                report(f"{name} (symbolic trace tried first)", *timed(model, inputs))
        t = time.perf_counter()
        with torch.no_grad():
            model(*inputs)
        print(f"  one eager forward {time.perf_counter() - t:.2f} s; torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
