"""Checkpoints that a crash cannot corrupt, and the RNG states a bit-identical resume needs.

``save_atomic`` writes to a temporary file in the same directory, fsyncs it, then
``os.replace``s it over the target: a reader sees either the previous complete file or the
new complete file, never a partial one (POSIX rename is atomic within a file system).
Files get the permissions of an ordinary ``open(path, "w")`` (0666 less the user's umask),
not the 0600 of the temporary file.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import tempfile

import numpy as np
import torch


RUN_FILE = "last.pt"  # a run's checkpoint in its --out


def run_file(out: str) -> str:
    return os.path.join(out, RUN_FILE)


def write_run(state: dict, history: list, out: str) -> None:
    """The checkpoint of the run in ``out`` and its ``history.json``, each written atomically."""
    save_atomic(state, run_file(out))
    write_json_atomic(history, os.path.join(out, "history.json"))


def save_atomic(obj, path: str) -> None:
    """``torch.save`` to ``path`` atomically."""
    _write_atomic(path, "wb", lambda f: torch.save(obj, f))


def save_safetensors_atomic(state: dict, path: str) -> None:
    """A state_dict as a safetensors file at ``path``, atomically (a file of tensors only:
    it loads without running code, unlike a pickle)."""
    from safetensors.torch import save

    # contiguous private copies: safetensors refuses tensors that share storage
    data = save({k: v.detach().cpu().contiguous().clone() for k, v in state.items()})
    _write_atomic(path, "wb", lambda f: f.write(data))


def write_json_atomic(obj, path: str) -> None:
    _write_atomic(path, "w", lambda f: json.dump(obj, f, indent=1))


def write_text_atomic(path: str, write) -> None:
    """``write(f)`` into a text file at ``path`` atomically."""
    _write_atomic(path, "w", write)


def _write_atomic(path: str, mode: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def load(path: str):
    """The checkpoint at ``path``, read with ``weights_only=True``: tensors and plain Python
    values only, so a tampered file cannot run code. One written before that (numpy's RNG state
    pickled as a numpy array) is refused with what to do."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}; start without --resume, or point --out at the run to resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # what weights_only refuses: a global it does not allow
        raise ValueError(f"cannot resume from {path!r}: it holds Python objects a safe load refuses (written by an "
                         f"older fxsparse, or not by fxsparse), and loading them could run code; start the run again "
                         f"without --resume, after removing {os.path.dirname(path) or '.'!r} or with another --out "
                         f"({str(exc).strip().splitlines()[-1][:200]})") from None


def rng_state() -> dict:
    """Every RNG state a bit-identical resume restores, as tensors and plain Python values (numpy's
    as its fields, the key a tensor): what ``torch.load(weights_only=True)`` reads back."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [str(kind), torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
