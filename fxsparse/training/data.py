"""Data loading for training sparse models: (Fashion-)MNIST, CIFAR-10/100 and image folders.

Plain ``torch.utils.data`` plus numpy; no torchvision and no downloads. Files are read
from disk in their usual distribution formats:

* MNIST / Fashion-MNIST: IDX files (``train-images-idx3-ubyte[.gz]`` ...).  On Debian/Ubuntu
  ``apt-get install dataset-fashion-mnist`` puts Fashion-MNIST under
  ``/usr/share/datasets/fashion-mnist/`` (the four ``*-ubyte.gz`` files), the default root.
* CIFAR-10 / CIFAR-100: the *python* pickle version (``cifar-10-batches-py`` /
  ``cifar-100-python``, as extracted from the tarballs), unpickled allowing numpy arrays only:
  a file whose pickle names anything else (which could run code) is refused.
* ``root/<class>/*.png|*.jpg``: read with Pillow when it is installed (optional).

    train_loader, test_loader, info = make_loaders("fashion-mnist", batch_size=128, seed=0)
    for epoch in range(start_epoch, epochs):
        train_loader.sampler.set_epoch(epoch)    # optional: epochs also advance by themselves
        for x, y in train_loader: ...

Every dataset yields ``(float tensor [C, H, W], int label)``.  A transform (augmentation)
sees the image as float in [0, 1], before the per-channel normalisation with the mean/std of
the *training* images.  The shuffle order of an epoch and the random augmentation of every
sample are functions of ``(seed, epoch)`` only - not of the number of workers or of what ran
before - so a run resumed at epoch ``e`` (``sampler.set_epoch(e)``) sees the same batches.
"""
from __future__ import annotations

import gzip
import os
import pickle
import random
import zlib
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "read_idx", "IdxImageDataset", "CifarDataset", "ImageFolderDataset",
    "Transform", "Compose", "RandomCrop", "RandomHorizontalFlip",
    "SeededSampler", "make_loaders", "seed_worker", "FASHION_MNIST_DIR", "DATASETS",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist/"
DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "folder")

FASHION_MNIST_HINT = (
    "For Fashion-MNIST on Debian/Ubuntu: `apt-get install dataset-fashion-mnist` installs "
    f"the files under {FASHION_MNIST_DIR}; otherwise pass root= (`--data-root` on the command line) <directory holding "
    "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
    "t10k-labels-idx1-ubyte[.gz]>."
)
CIFAR_HINT = (
    "Download the *python* version from https://www.cs.toronto.edu/~kriz/cifar.html, extract it "
    "and pass root= (`--data-root`) <the extracted cifar-10-batches-py or cifar-100-python directory>."
)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# ----------------------------------------------------------------------------- IDX

# IDX type code -> big-endian numpy dtype
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), plain or gzip-compressed.

    Header: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then one big-endian uint32 per
    dimension; the data follow, big-endian, C order.  Returns an array in native byte order.

    Raises FileNotFoundError (naming the path) when the file is missing and ValueError
    (naming the file and the defect) when it is not a well-formed IDX file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file not found: {path!r}. {FASHION_MNIST_HINT}")
    try:
        if _is_gzip(path):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path!r}: cannot decompress this gzip file ({e}); "
                         "it is truncated or corrupt") from e
    if len(raw) < 4:
        raise ValueError(f"{path!r}: not an IDX file: only {len(raw)} bytes, "
                         "shorter than the 4-byte magic number")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path!r}: not an IDX file: bad magic number 0x{raw[:4].hex()} (expected "
            "00 00 <type code 08/09/0B/0C/0D/0E> <ndim>, e.g. 0x00000803 for images, "
            "0x00000801 for labels)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    if ndim == 0:
        raise ValueError(f"{path!r}: bad magic number 0x{raw[:4].hex()}: 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path!r}: truncated IDX header: {ndim} dimensions need "
                         f"{header} header bytes, the file has {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got < expected:
        raise ValueError(f"{path!r}: truncated IDX data: shape {shape} of {dtype.name} needs "
                         f"{expected} data bytes, the file has {got}")
    if got > expected:
        raise ValueError(f"{path!r}: {got - expected} unexpected trailing bytes after the "
                         f"IDX data of shape {shape} (wrong header or two files joined?)")
    arr = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return arr.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


# ----------------------------------------------------------------------------- augmentation


class Transform:
    """Base of the augmentations here: ``t(img, generator=None)`` on a float [C, H, W] tensor.

    With a ``torch.Generator`` the result is a function of the generator's state; without one
    the global torch RNG is used (seeded per worker by the DataLoader).
    """

    def __call__(self, img: torch.Tensor, generator: Optional[torch.Generator] = None):
        raise NotImplementedError


class Compose(Transform):
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, img, generator=None):
        for t in self.transforms:
            img = _apply(t, img, generator)
        return img

    def __repr__(self):
        return f"Compose({self.transforms!r})"


class RandomCrop(Transform):
    """Pad every side by ``padding`` (constant ``fill``), then crop a random ``size`` window."""

    def __init__(self, size, padding: int = 0, fill: float = 0.0):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if padding < 0:
            raise ValueError(f"RandomCrop: padding must be >= 0, got {padding}")
        self.padding, self.fill = int(padding), float(fill)

    def __call__(self, img, generator=None):
        if self.padding:
            p = self.padding
            img = F.pad(img, (p, p, p, p), mode="constant", value=self.fill)
        h, w = img.shape[-2:]
        th, tw = self.size
        if th > h or tw > w:
            raise ValueError(f"RandomCrop: crop size {self.size} is larger than the padded "
                             f"image ({h}, {w})")
        top = int(torch.randint(0, h - th + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - tw + 1, (1,), generator=generator))
        return img[..., top:top + th, left:left + tw].contiguous()

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip(Transform):
    """Mirror the image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, img, generator=None):
        if float(torch.rand((), generator=generator)) < self.p:
            return img.flip(-1)
        return img

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


def _apply(t: Callable, img, generator):
    if isinstance(t, Transform):
        return t(img, generator=generator)
    return t(img)  # a user callable: uses the global RNG (seeded per worker)


def _mix(*values: int) -> int:
    """A 63-bit hash of some integers (splitmix64 steps): independent seeds per (seed, epoch, index)."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


# ----------------------------------------------------------------------------- datasets


class _ImageDataset(Dataset):
    """Shared item logic: uint8/float image -> [0, 1] float -> transform -> normalise.

    An index may be an int, or ``(index, seed)`` as yielded by :class:`SeededSampler`: then
    the transform gets a ``torch.Generator`` seeded from ``(seed, index)``, which makes the
    augmentation independent of worker count and scheduling.
    """

    transform: Optional[Callable] = None
    mean: Optional[torch.Tensor] = None   # [C]
    std: Optional[torch.Tensor] = None    # [C]

    def _raw(self, index: int) -> torch.Tensor:  # float [C, H, W] in [0, 1]
        raise NotImplementedError

    def _label(self, index: int) -> int:
        raise NotImplementedError

    def __getitem__(self, key):
        seed = None
        if isinstance(key, (tuple, list)):
            key, seed = key
        index = int(key)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {key} out of range for a dataset of {len(self)} samples")
        img = self._raw(index)
        if self.transform is not None:
            gen = None
            if seed is not None:
                gen = torch.Generator().manual_seed(_mix(seed, index))
            img = _apply(self.transform, img, gen)
        if self.mean is not None:
            img = (img - self.mean.view(-1, 1, 1)) / self.std.view(-1, 1, 1)
        return img, self._label(index)


def _channel_stats(images_u8: np.ndarray, channel_axis: Optional[int]):
    """Per-channel mean/std (of values scaled to [0, 1]) of a uint8 array, in float64."""
    x = images_u8
    if channel_axis is None:  # single channel
        flat = x.reshape(1, -1)
    else:
        flat = np.moveaxis(x, channel_axis, 0).reshape(x.shape[channel_axis], -1)
    n = flat.shape[1]
    mean = np.empty(flat.shape[0])
    std = np.empty(flat.shape[0])
    for c in range(flat.shape[0]):  # bincount: exact, fast and memory-light for uint8
        row = np.ascontiguousarray(flat[c]).ravel()
        counts = np.zeros(256, dtype=np.int64)
        for i in range(0, row.size, 1 << 20):  # chunks keep bincount's int64 copy small
            counts += np.bincount(row[i:i + (1 << 20)], minlength=256)
        counts = counts.astype(np.float64)
        v = np.arange(256, dtype=np.float64) / 255.0
        m = (counts * v).sum() / n
        mean[c] = m
        std[c] = np.sqrt(max((counts * (v - m) ** 2).sum() / n, 0.0))
    std[std < 1e-12] = 1.0  # constant images: leave the scale alone
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def _as_stats(mean, std, channels: int):
    mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
    std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
    if mean.numel() == 1:
        mean = mean.expand(channels).clone()
    if std.numel() == 1:
        std = std.expand(channels).clone()
    if mean.numel() != channels or std.numel() != channels:
        raise ValueError(f"mean/std need 1 or {channels} values, got {mean.numel()} and {std.numel()}")
    if (std <= 0).any():
        raise ValueError(f"std must be positive, got {std.tolist()}")
    return mean, std


def _find_file(root: str, stem: str, hint: str) -> str:
    for name in (stem, stem + ".gz"):
        p = os.path.join(root, name)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(f"neither {stem!r} nor {stem + '.gz'!r} found in {root!r}. {hint}")


def _check_dir(root, what: str, hint: str) -> str:
    if root is None:
        raise FileNotFoundError(f"no directory given for {what}. {hint}")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{what} directory not found: {root!r}. {hint}")
    return root


_IDX_STATS_CACHE: dict = {}


class IdxImageDataset(_ImageDataset):
    """MNIST / Fashion-MNIST from IDX files in ``root``.

    ``train=True`` reads ``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``,
    ``train=False`` the ``t10k-*`` pair.  Items are ``(float tensor [1, H, W], int label)``
    normalised with the mean/std of the *training* images (also for the test split, which
    therefore reads the training images once unless ``mean``/``std`` are given; the result is
    cached per file).  ``normalize=False`` leaves the images in [0, 1].
    """

    def __init__(self, root, train: bool = True, transform: Optional[Callable] = None, *,
                 mean=None, std=None, normalize: bool = True, hint: str = FASHION_MNIST_HINT):
        root = _check_dir(root, "MNIST/Fashion-MNIST", hint)
        prefix = "train" if train else "t10k"
        self.root, self.train, self.transform = root, train, transform
        self.images_path = _find_file(root, f"{prefix}-images-idx3-ubyte", hint)
        self.labels_path = _find_file(root, f"{prefix}-labels-idx1-ubyte", hint)
        images = read_idx(self.images_path)
        labels = read_idx(self.labels_path)
        if images.ndim != 3:
            raise ValueError(f"{self.images_path!r}: expected images of shape [N, H, W], "
                             f"got shape {images.shape}")
        if labels.ndim != 1:
            raise ValueError(f"{self.labels_path!r}: expected labels of shape [N], got shape {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(f"image/label count mismatch: {self.images_path!r} holds "
                             f"{len(images)} images, {self.labels_path!r} holds {len(labels)} labels")
        if images.dtype != np.uint8:
            raise ValueError(f"{self.images_path!r}: expected uint8 pixels, got {images.dtype}")
        self.images = torch.from_numpy(images)           # uint8 [N, H, W]
        self.targets = torch.from_numpy(labels.astype(np.int64))
        self.num_classes = int(self.targets.max()) + 1 if len(self.targets) else 0
        if normalize:
            if mean is None or std is None:
                mean, std = (_channel_stats(images, None) if train
                             else self._train_stats(root, hint))
            self.mean, self.std = _as_stats(mean, std, 1)
        else:
            self.mean = self.std = None

    @staticmethod
    def _train_stats(root, hint):
        path = _find_file(root, "train-images-idx3-ubyte", hint)
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
        if key not in _IDX_STATS_CACHE:
            _IDX_STATS_CACHE[key] = _channel_stats(read_idx(path), None)
        return _IDX_STATS_CACHE[key]

    def __len__(self):
        return len(self.targets)

    def _raw(self, index):
        return self.images[index].unsqueeze(0).float().div_(255.0)

    def _label(self, index):
        return int(self.targets[index])


# the globals a CIFAR batch pickles (numpy arrays; bytes as Python 3 pickles them): a file
# naming any other, which could run code, is refused
_CIFAR_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never holds (a pickle that "
                                         "names other globals can run code; it is not loaded)")
        return super().find_class(module, name)


def _load_pickle(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ValueError(f"{path!r}: cannot unpickle this CIFAR batch file ({type(e).__name__}: {e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path!r}: expected a pickled dict, got {type(d).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


class CifarDataset(_ImageDataset):
    """CIFAR-10 or CIFAR-100 in the python pickle format (read allowing numpy arrays only: a
    pickle naming anything else is refused, never run).

    ``root`` is the extracted ``cifar-10-batches-py`` (``data_batch_1..5``, ``test_batch``,
    ``batches.meta``) or ``cifar-100-python`` (``train``, ``test``, ``meta``) directory, or a
    directory holding one of them.  Each batch is a dict with ``b'data'`` (uint8 [N, 3072],
    channel-major 32x32) and ``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100;
    ``coarse=True`` picks ``b'coarse_labels'``).  Items are ``(float [3, 32, 32], int)``
    normalised per channel with the training-set mean/std.
    """

    def __init__(self, root, train: bool = True, transform: Optional[Callable] = None, *,
                 mean=None, std=None, normalize: bool = True, coarse: bool = False):
        root = _check_dir(root, "CIFAR", CIFAR_HINT)
        root = self._resolve(root)
        self.root, self.train, self.transform = root, train, transform
        if os.path.isfile(os.path.join(root, "data_batch_1")) or os.path.isfile(os.path.join(root, "test_batch")):
            self.variant = "cifar10"
            train_files = sorted((f for f in os.listdir(root) if f.startswith("data_batch_")),
                                 key=lambda f: int(f.rsplit("_", 1)[1]) if f.rsplit("_", 1)[1].isdigit() else 1 << 30)
            test_files = ["test_batch"]
            meta_name = "batches.meta"
        elif os.path.isfile(os.path.join(root, "train")) or os.path.isfile(os.path.join(root, "test")):
            self.variant = "cifar100"
            train_files, test_files, meta_name = ["train"], ["test"], "meta"
        else:
            raise FileNotFoundError(
                f"no CIFAR batch files in {root!r}: expected data_batch_1..5 + test_batch "
                f"(CIFAR-10) or train + test (CIFAR-100). {CIFAR_HINT}")
        if train and not train_files:
            raise FileNotFoundError(f"no data_batch_* files in {root!r}. {CIFAR_HINT}")
        self.files = [os.path.join(root, f) for f in (train_files if train else test_files)]
        data, labels = self._read(self.files, coarse)
        self.data = torch.from_numpy(data)            # uint8 [N, 3, 32, 32]
        self.targets = torch.from_numpy(labels)
        self.classes = self._classes(os.path.join(root, meta_name), coarse)
        self.num_classes = (len(self.classes) if self.classes
                            else (int(self.targets.max()) + 1 if len(self.targets) else 0))
        if normalize:
            if mean is None or std is None:
                train_data = data if train else self._read(
                    [os.path.join(root, f) for f in train_files], coarse)[0]
                mean, std = _channel_stats(train_data, 1)
            self.mean, self.std = _as_stats(mean, std, 3)
        else:
            self.mean = self.std = None

    @staticmethod
    def _resolve(root):
        for sub in ("cifar-10-batches-py", "cifar-100-python"):
            p = os.path.join(root, sub)
            if os.path.isdir(p) and not os.path.isfile(os.path.join(root, "data_batch_1")) \
                    and not os.path.isfile(os.path.join(root, "train")):
                return p
        return root

    @staticmethod
    def _read(files, coarse):
        datas, labels = [], []
        for path in files:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"CIFAR batch file not found: {path!r}. {CIFAR_HINT}")
            d = _load_pickle(path)
            if "data" not in d:
                raise ValueError(f"{path!r}: no b'data' entry (keys: {sorted(map(str, d))})")
            keys = ("coarse_labels",) if coarse else ("labels", "fine_labels")
            key = next((k for k in keys if k in d), None)
            if key is None:
                raise ValueError(f"{path!r}: no {' or '.join('b%r' % k for k in keys)} entry "
                                 f"(keys: {sorted(map(str, d))})")
            x = np.asarray(d["data"])
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
                raise ValueError(f"{path!r}: b'data' should be uint8 [N, 3072], got "
                                 f"{x.dtype} {list(x.shape)}")
            y = np.asarray(d[key], dtype=np.int64).reshape(-1)
            if len(x) != len(y):
                raise ValueError(f"image/label count mismatch in {path!r}: {len(x)} images, "
                                 f"{len(y)} labels (b'{key}')")
            datas.append(x.reshape(-1, 3, 32, 32))
            labels.append(y)
        return np.concatenate(datas), np.concatenate(labels)

    @staticmethod
    def _classes(meta_path, coarse):
        if not os.path.isfile(meta_path):
            return None
        m = _load_pickle(meta_path)
        for k in (("coarse_label_names",) if coarse else ("label_names", "fine_label_names")):
            if k in m:
                return [n.decode() if isinstance(n, bytes) else str(n) for n in m[k]]
        return None

    def __len__(self):
        return len(self.targets)

    def _raw(self, index):
        return self.data[index].float().div_(255.0)

    def _label(self, index):
        return int(self.targets[index])


_IMG_EXTS = (".png", ".jpg", ".jpeg")


def _require_pil():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("ImageFolderDataset reads images with Pillow, which is not installed: "
                          "`pip install pillow`") from e
    return Image


class ImageFolderDataset(_ImageDataset):
    """``root/<class>/*.png|*.jpg|*.jpeg``; class index = position of the folder name in sorted order.

    Images are read with Pillow (optional dependency: ImportError asking for
    ``pip install pillow`` when missing) and converted to RGB (``mode="L"`` for grayscale),
    giving float [C, H, W] in [0, 1].  Give ``mean``/``std`` (per channel) to normalise;
    :func:`make_loaders` computes them from the training folder.  All images must have the
    same size to be batched (or the transform must make them so).
    """

    def __init__(self, root, transform: Optional[Callable] = None, *, mean=None, std=None,
                 mode: str = "RGB"):
        self._Image = _require_pil()
        root = _check_dir(root, "image folder", "Expected root/<class_name>/*.png|*.jpg.")
        self.root, self.transform, self.mode = root, transform, mode
        self.classes = sorted(d for d in os.listdir(root)
                              if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
        if not self.classes:
            raise FileNotFoundError(f"no class folders in {root!r}: expected root/<class_name>/*.png|*.jpg")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = []
        for c in self.classes:
            folder = os.path.join(root, c)
            for dirpath, dirnames, files in sorted(os.walk(folder)):
                dirnames.sort()
                for f in sorted(files):
                    if f.lower().endswith(_IMG_EXTS):
                        self.samples.append((os.path.join(dirpath, f), self.class_to_idx[c]))
        if not self.samples:
            raise FileNotFoundError(f"no .png/.jpg/.jpeg images under the class folders of {root!r}")
        self.targets = torch.tensor([y for _, y in self.samples], dtype=torch.int64)
        self.num_classes = len(self.classes)
        self.in_chans = {"L": 1, "RGB": 3, "RGBA": 4}.get(mode, 3)
        if mean is not None and std is not None:
            self.mean, self.std = _as_stats(mean, std, self.in_chans)

    def __len__(self):
        return len(self.samples)

    def _raw(self, index):
        path = self.samples[index][0]
        try:
            with self._Image.open(path) as im:
                arr = np.array(im.convert(self.mode), dtype=np.uint8)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"cannot read image {path!r}: {type(e).__name__}: {e}") from e
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)

    def _label(self, index):
        return self.samples[index][1]

    def compute_stats(self, max_images: int = 2000):
        """Per-channel mean/std (in [0, 1] units) over up to ``max_images`` evenly spaced images."""
        n = len(self)
        idx = np.unique(np.linspace(0, n - 1, min(n, max_images)).round().astype(int))
        s = torch.zeros(self.in_chans, dtype=torch.float64)
        s2 = torch.zeros_like(s)
        count = 0
        for i in idx:
            x = self._raw(int(i)).double().flatten(1)
            s += x.sum(1)
            s2 += (x * x).sum(1)
            count += x.shape[1]
        mean = s / count
        std = (s2 / count - mean * mean).clamp_min(0).sqrt()
        std[std < 1e-12] = 1.0
        return mean.float(), std.float()


# ----------------------------------------------------------------------------- loaders


class SeededSampler(Sampler):
    """Yields ``(index, sample_seed)`` in an order that depends only on ``(seed, epoch)``.

    Each ``iter()`` uses the current epoch and then advances it by one, so plain
    ``for epoch ...: for batch in loader`` gets a new order every epoch; ``set_epoch(e)``
    sets the epoch the next pass uses (to resume at epoch ``e``).  The ``sample_seed``
    lets the dataset draw each sample's augmentation from its own generator.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True):
        self.num_samples, self.seed, self.shuffle = int(num_samples), int(seed), shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int) -> list:
        """The sample indices of ``epoch`` in the order they are visited."""
        if not self.shuffle:
            return list(range(self.num_samples))
        g = torch.Generator().manual_seed(_mix(self.seed, epoch, 0x5EED))
        return torch.randperm(self.num_samples, generator=g).tolist()

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        epoch_seed = _mix(self.seed, epoch, 0xA06)
        return iter([(i, epoch_seed) for i in self.order(epoch)])

    def __len__(self):
        return self.num_samples


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` that seeds numpy's and Python's RNGs from the worker's torch seed."""
    s = torch.initial_seed() % 2 ** 32
    np.random.seed(s)
    random.seed(s)


def _cifar_augment(size=32):
    return Compose([RandomCrop(size, padding=4), RandomHorizontalFlip()])


def make_loaders(name: str, root=None, batch_size: int = 128, num_workers: int = 0, seed: int = 0,
                 *, augment: Optional[bool] = None, test_batch_size: Optional[int] = None,
                 drop_last: bool = False, train_transform: Optional[Callable] = None):
    """``(train_loader, test_loader, info)`` for ``name`` in ``DATASETS``.

    * ``root``: the data directory; for ``"fashion-mnist"`` it defaults to
      ``/usr/share/datasets/fashion-mnist/`` (Debian's ``dataset-fashion-mnist``).  For
      ``"folder"`` it must hold ``train/`` and ``test/`` (or ``val/``) image folders.
    * ``augment``: None = the usual default (CIFAR and folders: random crop with padding 4 +
      horizontal flip; (Fashion-)MNIST: none); True for (Fashion-)MNIST = random crop with
      padding 2.  ``train_transform`` replaces the default augmentation.
    * The train loader shuffles with a :class:`SeededSampler` (``train_loader.sampler``): the
      order and the augmentation of epoch ``e`` are fixed by ``(seed, e)``; epochs advance on
      each pass, ``train_loader.sampler.set_epoch(e)`` resumes at ``e``.  The test loader
      keeps file order and never augments.
    * ``info``: dict(num_classes, in_chans, image_size, train_size, test_size, mean, std, classes).
    """
    key = name.lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100",
           "imagefolder": "folder", "image-folder": "folder"}.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    if key in ("fashion-mnist", "mnist"):
        if root is None and key == "fashion-mnist":
            if not os.path.isdir(FASHION_MNIST_DIR):
                raise FileNotFoundError(f"Fashion-MNIST not found at the default {FASHION_MNIST_DIR!r}. "
                                        f"{FASHION_MNIST_HINT}")
            root = FASHION_MNIST_DIR
        hint = FASHION_MNIST_HINT if key == "fashion-mnist" else (
            "Pass root= (`--data-root` on the command line) <directory holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
            "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]> (MNIST IDX files).")
        train_ds = IdxImageDataset(root, train=True, hint=hint)
        size = tuple(train_ds.images.shape[1:])
        if train_transform is None and augment:
            train_transform = RandomCrop(size, padding=2)
        train_ds.transform = train_transform
        test_ds = IdxImageDataset(root, train=False, mean=train_ds.mean, std=train_ds.std, hint=hint)
        in_chans = 1
        classes = list(FASHION_MNIST_CLASSES) if key == "fashion-mnist" else [str(i) for i in range(10)]
        num_classes = max(10, train_ds.num_classes)
    elif key in ("cifar10", "cifar100"):
        train_ds = CifarDataset(root, train=True)
        if train_transform is None and augment is not False:
            train_transform = _cifar_augment(32)
        train_ds.transform = train_transform
        test_ds = CifarDataset(train_ds.root, train=False, mean=train_ds.mean, std=train_ds.std)
        want = "cifar10" if key == "cifar10" else "cifar100"
        if train_ds.variant != want:
            raise ValueError(f"{train_ds.root!r} holds {train_ds.variant} files, not {want}")
        size, in_chans, classes = (32, 32), 3, train_ds.classes
        num_classes = train_ds.classes and len(train_ds.classes) or (10 if key == "cifar10" else 100)
    else:  # folder
        root = _check_dir(root, "image folder", "Expected root/train/<class>/* and root/test/<class>/* (or root/val/).")
        test_dir = next((os.path.join(root, d) for d in ("test", "val") if os.path.isdir(os.path.join(root, d))), None)
        train_dir = os.path.join(root, "train")
        if not os.path.isdir(train_dir) or test_dir is None:
            raise FileNotFoundError(f"{root!r} needs a train/ and a test/ (or val/) subdirectory, each "
                                    "holding <class_name>/*.png|*.jpg")
        train_ds = ImageFolderDataset(train_dir)
        mean, std = train_ds.compute_stats()
        train_ds.mean, train_ds.std = mean, std
        first = train_ds._raw(0)
        in_chans, size = first.shape[0], tuple(first.shape[1:])
        if train_transform is None and augment is not False:
            train_transform = Compose([RandomCrop(size, padding=max(1, size[0] // 8)), RandomHorizontalFlip()])
        train_ds.transform = train_transform
        test_ds = ImageFolderDataset(test_dir, mean=mean, std=std)
        if test_ds.classes != train_ds.classes:
            raise ValueError(f"class folders differ: train has {train_ds.classes}, {test_dir!r} has {test_ds.classes}")
        classes, num_classes = train_ds.classes, train_ds.num_classes

    g = torch.Generator().manual_seed(int(seed))
    common = dict(num_workers=num_workers, worker_init_fn=seed_worker if num_workers else None,
                  persistent_workers=False)
    train_loader = DataLoader(train_ds, batch_size=batch_size, sampler=SeededSampler(len(train_ds), seed),
                              drop_last=drop_last, generator=g, **common)
    test_loader = DataLoader(test_ds, batch_size=test_batch_size or batch_size, shuffle=False, **common)
    image_size = size[0] if size[0] == size[1] else size
    info = dict(num_classes=int(num_classes), in_chans=int(in_chans), image_size=image_size,
                train_size=len(train_ds), test_size=len(test_ds), classes=classes,
                mean=train_ds.mean.tolist() if train_ds.mean is not None else None,
                std=train_ds.std.tolist() if train_ds.std is not None else None)
    return train_loader, test_loader, info
