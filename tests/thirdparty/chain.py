"""The chain every third-party model goes through, as a user would run it: analyze -> export
at two random keep-0.5 masks -> the exported model equal to the masked reference
(``fxsparse.check_against_reference``) -> its backward -> a sparse (capacity) forward and
backward; with the FLOPs of the exported model at keep 0.5 relative to dense
(``fxsparse.count_flops`` on both models)."""
from __future__ import annotations

import time
import traceback
import warnings

import torch

import fxsparse


def first_tensor(out):
    """The first tensor of a model output (a tensor, a dict / ``ModelOutput`` or a nested tuple)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    for item in out:
        t = first_tensor(item) if not isinstance(item, torch.Tensor) else item
        if t is not None:
            return t
    return None


def _flops(model, inputs):
    return fxsparse.count_flops(model, inputs)[0]


def run_one(name, models, keep=0.5, n_masks=2, atol=1e-4, verbose=False, timings=None):
    """(status, failure class / detail, FLOPs ratio at ``keep`` or None, seconds) of the model
    ``models[name]()`` builds ({name: builder returning (model, inputs)}); ``timings``: a dict that
    receives the seconds of ``fxsparse.analyze`` alone under "analyze"."""
    t0 = time.perf_counter()
    stage = "build"
    try:
        torch.manual_seed(0)
        model, inputs = models[name]()
        model.eval()
        stage = "analyze"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_analyze = time.perf_counter()
            graph = fxsparse.analyze(model, inputs)
            if timings is not None:
                timings["analyze"] = time.perf_counter() - t_analyze
    except Exception as exc:
        return (*_failed(stage, exc, verbose), None, time.perf_counter() - t0)
    return (*run_chain(model, inputs, graph, model, keep, n_masks, atol, verbose), time.perf_counter() - t0)


def run_chain(model, inputs, graph, stepped, keep=0.5, n_masks=2, atol=1e-4, verbose=False):
    """(status, failure class / detail, FLOPs ratio at ``keep`` or None) of the chain after the
    analysis: ``model`` is only read; the sparse step trains ``stepped`` (the model itself, or
    the same model built again where ``model`` is shared by other tests, tests/captures.py)."""
    stage = "analyze"
    flops_ratio = None
    try:
        if not graph.prunable_groups:
            return "fail", "no prunable group", None
        dense_flops = _flops(model, inputs)
        gen = torch.Generator().manual_seed(0)
        for i in range(n_masks):
            keep_i = fxsparse.random_keep(graph, keep, gen)
            stage = "export"
            small = fxsparse.export(model, graph, keep_i)
            small.eval()
            stage = "exported forward and masked reference"
            check = fxsparse.check_against_reference(small, graph, keep_i, inputs, atol=atol)
            if not check.ok:
                return "fail", f"differs: {check.message}", None
            out = check.first_output
            stage = "exported backward"
            out.float().sum().backward()
            if i == 0:
                flops_ratio = _flops(small, inputs) / dense_flops
        stage = "sparse step"
        sparse = fxsparse.compile(stepped, inputs, keep=keep, compile=False, graph=graph)
        out = first_tensor(sparse(*inputs))
        out.float().sum().backward()
        return "pass", "", flops_ratio
    except Exception as exc:  # the table names the stage and error class
        return (*_failed(stage, exc, verbose), flops_ratio)


def _failed(stage, exc, verbose):
    """("fail", the stage and error class) of an exception."""
    if verbose:
        traceback.print_exc()
    msg = str(exc).splitlines()[0][:150] if str(exc) else ""
    return "fail", f"{stage}: {type(exc).__name__}: {msg}"
