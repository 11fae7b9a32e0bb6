"""What the README claims about third-party models, measured over every one the tests build:
the vendored torchvision/timm-style models (``tests/thirdparty``), the ``transformers`` models
(``transformers_models.py``), the real timm models (``timm_models.py``) and the issue-#31
families built only by their tests (``tests/thirdparty/test_thirdparty_moe.py``,
``tests/thirdparty/test_thirdparty_ssm_audio.py``), each through the same chain (``chain.run_one``:
analyze -> export at two keep-0.5 masks -> equality with the masked reference -> backward ->
a sparse forward/backward).

Prints one line per model, then, per set and over all: the share that pass, the median and
worst FLOPs ratio of the exported model at keep 0.5 (``fxsparse.count_flops``, exported /
dense), the median and largest ``fxsparse.analyze`` time (one thread).

    OMP_NUM_THREADS=1 python tests/thirdparty/survey.py [--json PATH] [--sets vendored,transformers,timm,tests] [name ...]
"""
from __future__ import annotations

import json
import os
import statistics
import sys

import torch

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS not in sys.path:  # run as a script: the test helpers (the thirdparty package, the family tests)
    sys.path.insert(0, TESTS)

from thirdparty.chain import run_one  # noqa: E402


def _vendored():
    from thirdparty import MODELS

    return {name: MODELS[name] for name in sorted(MODELS)}


def _transformers():
    from thirdparty.transformers_models import MODELS

    return dict(MODELS)


def _timm():
    from thirdparty.timm_models import MODELS, build, import_timm

    if import_timm() is None:
        return {}
    return {name: (lambda name=name: build(name)) for name in MODELS}


def _tests():
    """The families the issue-#31 tests build that no benchmark list holds."""
    from thirdparty import test_thirdparty_moe as moe
    from thirdparty import test_thirdparty_ssm_audio as ssm

    def tokens(build):
        return lambda: (build(), moe._tokens())

    def audio():
        return (torch.randn(2, 800, generator=torch.Generator().manual_seed(0)),)

    def images(build, size):
        return lambda: (build(), ssm._image(size))

    return {
        "qwen3_moe": tokens(moe._qwen3_moe),
        "clip_vision_projection": images(ssm._clip, 32),
        "mamba2_heads_own_bc": tokens(lambda: ssm._mamba2(groups=8)),
        "mamba2_shared_bc": tokens(lambda: ssm._mamba2(groups=1)),
        "wav2vec2": lambda: (ssm._wav2vec2(), audio()),
        "wav2vec2_ctc": lambda: (ssm._wav2vec2(head=True), audio()),
        "tiny_vit_small": images(lambda: ssm._timm("tiny_vit_5m_224", embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1),
                                                   num_heads=(1, 2, 3, 4), window_sizes=(2, 2, 2, 2)), 64),
        "efficientvim_small": images(lambda: ssm._timm("efficientvim_m1", embed_dim=(16, 32, 48), depths=(1, 1, 1),
                                                       state_dim=(8, 6, 4)), 64),
    }


SETS = {"vendored": _vendored, "transformers": _transformers, "timm": _timm, "tests": _tests}


def _summary(rows):
    passed = [r for r in rows if r["status"] == "pass"]
    flops = [r["flops"] for r in passed if r["flops"] is not None]
    times = [r["analyze_s"] for r in rows if r["analyze_s"] is not None]
    worst = max(passed, key=lambda r: r["flops"] or 0.0) if passed else None
    return {"pass": len(passed), "total": len(rows),
            "flops_median": statistics.median(flops) if flops else None,
            "flops_worst": worst and worst["flops"], "flops_worst_model": worst and worst["name"],
            "analyze_median_s": statistics.median(times) if times else None,
            "analyze_max_s": max(times) if times else None,
            "analyze_max_model": max(rows, key=lambda r: r["analyze_s"] or 0.0)["name"] if times else None}


def _line(label, s):
    if not s["total"]:
        return f"{label:13s} (none)"
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    return (f"{label:13s} {s['pass']:3d}/{s['total']:<3d} pass  FLOPs@0.5 median {f(s['flops_median'])} worst "
            f"{f(s['flops_worst'])} ({s['flops_worst_model']})  analyze median {f(s['analyze_median_s'])} s, "
            f"max {f(s['analyze_max_s'])} s ({s['analyze_max_model']})")


def main(argv):
    json_path = argv[argv.index("--json") + 1] if "--json" in argv else None
    set_names = argv[argv.index("--sets") + 1].split(",") if "--sets" in argv else list(SETS)
    values = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--json", "--sets")}
    only = {a for a in argv if not a.startswith("-") and a not in values}  # model names, none: all
    torch.set_num_threads(1)
    results = {}
    for set_name in set_names:
        rows = []
        for name, build in SETS[set_name]().items():
            if only and name not in only:
                continue
            timings = {}
            status, why, flops, secs = run_one(name, {name: build}, timings=timings, verbose="-v" in argv)
            rows.append({"name": name, "status": status, "why": why, "flops": flops, "seconds": secs,
                         "analyze_s": timings.get("analyze")})
            print(f"  {set_name:12s} {name:32s} {status:4s} flops={'-' if flops is None else f'{flops:.2f}'} "
                  f"analyze={timings.get('analyze', float('nan')):.2f}s {why}", flush=True)
        results[set_name] = rows
    print()
    for set_name, rows in results.items():
        print(_line(set_name, _summary(rows)))
    every = [r for rows in results.values() for r in rows]
    print(_line("all", _summary(every)))
    if json_path:
        with open(json_path, "w") as fh:
            json.dump({"sets": results, "summary": {k: _summary(v) for k, v in results.items()},
                       "all": _summary(every), "torch": torch.__version__}, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
