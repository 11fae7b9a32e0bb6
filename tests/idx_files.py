"""Small data sets in the MNIST file format (IDX, optionally gzip) for the data and training tests."""
import gzip
import os
import struct

import numpy as np


def write_idx(path, arr, gz=False, dtype_code=0x08):
    arr = np.asarray(arr)
    header = bytes([0, 0, dtype_code, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    be = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[dtype_code]
    payload = header + arr.astype(be).tobytes()
    opener = gzip.open if gz else open
    with opener(str(path), "wb") as f:
        f.write(payload)
    return payload


def make_idx_dir(root, n_train=20, n_test=8, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    sfx = ".gz" if gz else ""
    tr = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    te = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    ytr = np.arange(n_train, dtype=np.uint8) % 10
    yte = (np.arange(n_test, dtype=np.uint8) * 3) % 10
    write_idx(os.path.join(root, "train-images-idx3-ubyte" + sfx), tr, gz)
    write_idx(os.path.join(root, "train-labels-idx1-ubyte" + sfx), ytr, gz)
    write_idx(os.path.join(root, "t10k-images-idx3-ubyte" + sfx), te, gz)
    write_idx(os.path.join(root, "t10k-labels-idx1-ubyte" + sfx), yte, gz)
    return tr, ytr, te, yte
