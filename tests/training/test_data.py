"""fxsparse.training.data: IDX / CIFAR / image-folder datasets, augmentation, seeded loaders, errors."""
import builtins
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from fxsparse.training import data as D
from idx_files import make_idx_dir, write_idx


# ----------------------------------------------------------------------------- fixtures


def make_cifar_dir(root, n_per_batch=6, n_test=5, variant="cifar10", seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)

    def dump(name, obj):
        with open(os.path.join(root, name), "wb") as f:
            pickle.dump(obj, f)

    def batch(n, key, ncls):
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        x[:, :1024] //= 4  # channel means differ: R dark, G/B full range
        y = [int(v) for v in rng.integers(0, ncls, size=n)]
        return x, y

    if variant == "cifar10":
        xs, ys = [], []
        for i in range(1, 6):
            x, y = batch(n_per_batch, b"labels", 10)
            dump(f"data_batch_{i}", {b"data": x, b"labels": y, b"batch_label": b"training batch"})
            xs.append(x)
            ys += y
        xt, yt = batch(n_test, b"labels", 10)
        dump("test_batch", {b"data": xt, b"labels": yt})
        dump("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
        return np.concatenate(xs), ys, xt, yt
    x, y = batch(n_per_batch * 2, b"fine_labels", 100)
    dump("train", {b"data": x, b"fine_labels": y, b"coarse_labels": [v // 5 for v in y]})
    xt, yt = batch(n_test, b"fine_labels", 100)
    dump("test", {b"data": xt, b"fine_labels": yt, b"coarse_labels": [v // 5 for v in yt]})
    dump("meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                  b"coarse_label_names": [f"k{i}".encode() for i in range(20)]})
    return x, y, xt, yt


# ----------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_plain_and_gzip(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / ("x.idx" + (".gz" if gz else ""))
    write_idx(p, a, gz)
    out = D.read_idx(p)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, a)
    assert out.flags.writeable  # a real copy, not a view of the file buffer


@pytest.mark.parametrize("code,dtype", [(0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32),
                                        (0x0D, np.float32), (0x0E, np.float64)])
def test_read_idx_other_dtypes_native_byte_order(tmp_path, code, dtype):
    a = (np.arange(6) - 3).astype(dtype).reshape(3, 2)
    write_idx(tmp_path / "x", a, dtype_code=code)
    out = D.read_idx(tmp_path / "x")
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, a)


def test_read_idx_missing_file(tmp_path):
    p = tmp_path / "nope-idx3-ubyte"
    with pytest.raises(FileNotFoundError) as e:
        D.read_idx(p)
    msg = str(e.value)
    assert str(p) in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "/usr/share/datasets/fashion-mnist/" in msg


def test_read_idx_bad_magic(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="bad magic number 0x12340801") as e:
        D.read_idx(p)
    assert str(p) in str(e.value)
    p.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x05")  # unknown type code
    with pytest.raises(ValueError, match="bad magic"):
        D.read_idx(p)
    p.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="shorter than the 4-byte magic"):
        D.read_idx(p)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated_data(tmp_path, gz):
    a = np.zeros((4, 5, 5), np.uint8)
    p = tmp_path / "t"
    payload = write_idx(p, a, False)
    cut = payload[:-7]
    if gz:
        p = tmp_path / "t.gz"
        p.write_bytes(gzip.compress(cut))
    else:
        p.write_bytes(cut)
    with pytest.raises(ValueError, match=r"truncated IDX data: shape \(4, 5, 5\).*needs 100 data bytes, the file has 93") as e:
        D.read_idx(p)
    assert str(p) in str(e.value)


def test_read_idx_truncated_header_and_gzip_stream(tmp_path):
    p = tmp_path / "h"
    p.write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x02")  # 3 dims, only one given
    with pytest.raises(ValueError, match="truncated IDX header"):
        D.read_idx(p)
    g = tmp_path / "g.gz"
    full = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x10" + bytes(16) * 100)
    g.write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt") as e:
        D.read_idx(g)
    assert str(g) in str(e.value)


def test_read_idx_trailing_bytes(tmp_path):
    p = tmp_path / "x"
    payload = write_idx(p, np.zeros(3, np.uint8))
    p.write_bytes(payload + b"\x01")
    with pytest.raises(ValueError, match="trailing bytes"):
        D.read_idx(p)


# ----------------------------------------------------------------------------- IdxImageDataset


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dataset_items_and_normalisation(tmp_path, gz):
    tr, ytr, te, yte = make_idx_dir(tmp_path, gz=gz)
    ds = D.IdxImageDataset(tmp_path, train=True)
    assert len(ds) == 20
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert isinstance(y, int) and y == int(ytr[3])
    mean, std = tr.astype(np.float64).mean() / 255, tr.astype(np.float64).std() / 255
    assert ds.mean.item() == pytest.approx(mean, rel=1e-5) and ds.std.item() == pytest.approx(std, rel=1e-5)
    allx = torch.stack([ds[i][0] for i in range(len(ds))])
    assert allx.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert allx.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    torch.testing.assert_close(x, (torch.from_numpy(tr[3]).float()[None] / 255 - mean) / std, rtol=0, atol=1e-5)

    test = D.IdxImageDataset(tmp_path, train=False)  # normalised with the *training* stats
    assert len(test) == 8 and test[5][1] == int(yte[5])
    assert test.mean.item() == pytest.approx(mean, rel=1e-5) and test.std.item() == pytest.approx(std, rel=1e-5)
    assert ds[-1][1] == int(ytr[-1])
    with pytest.raises(IndexError):
        ds[20]
    raw = D.IdxImageDataset(tmp_path, normalize=False)[3][0]
    assert 0.0 <= raw.min() and raw.max() <= 1.0


def test_idx_dataset_missing_dir_and_files(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        D.IdxImageDataset(missing)
    assert str(missing) in str(e.value) and "apt-get install dataset-fashion-mnist" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte") as e:
        D.IdxImageDataset(tmp_path / "empty")
    assert "pass root=" in str(e.value)


def test_idx_dataset_count_mismatch(tmp_path):
    make_idx_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(19, np.uint8))
    with pytest.raises(ValueError, match="count mismatch.*20 images.*19 labels"):
        D.IdxImageDataset(tmp_path)


def test_idx_dataset_bad_magic_propagates(tmp_path):
    make_idx_dir(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"GIF89a" + bytes(20))
    with pytest.raises(ValueError, match="bad magic") as e:
        D.IdxImageDataset(tmp_path, train=False)
    assert "t10k-images-idx3-ubyte" in str(e.value)


# ----------------------------------------------------------------------------- CIFAR


def test_cifar10_items_and_per_channel_normalisation(tmp_path):
    x, y, xt, yt = make_cifar_dir(tmp_path)
    ds = D.CifarDataset(tmp_path, train=True)
    assert len(ds) == 30 and ds.variant == "cifar10" and ds.num_classes == 10
    assert ds.classes[:2] == ["c0", "c1"]
    img, lab = ds[7]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and lab == y[7]
    imgs = x.reshape(-1, 3, 32 * 32).astype(np.float64) / 255
    mean = imgs.transpose(1, 0, 2).reshape(3, -1).mean(1)
    std = imgs.transpose(1, 0, 2).reshape(3, -1).std(1)
    np.testing.assert_allclose(ds.mean.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(ds.std.numpy(), std, rtol=1e-5)
    assert mean[0] < mean[1]  # the channels really have their own statistics
    allx = torch.stack([ds[i][0] for i in range(len(ds))])
    torch.testing.assert_close(allx.mean((0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(allx.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    # channel-major layout: pixel (c, h, w) = data[c*1024 + h*32 + w]
    expect = (x[7].reshape(3, 32, 32)[2, 5, 9] / 255 - mean[2]) / std[2]
    assert img[2, 5, 9].item() == pytest.approx(expect, abs=1e-5)

    test = D.CifarDataset(tmp_path, train=False)
    assert len(test) == 5 and [test[i][1] for i in range(5)] == yt
    torch.testing.assert_close(test.mean, ds.mean)


def test_cifar100_fine_and_coarse(tmp_path):
    root = tmp_path / "cifar-100-python"
    x, y, xt, yt = make_cifar_dir(root, variant="cifar100")
    ds = D.CifarDataset(tmp_path)  # the parent of the extracted directory also works
    assert ds.variant == "cifar100" and ds.num_classes == 100 and len(ds) == 12
    assert [ds[i][1] for i in range(len(ds))] == y
    coarse = D.CifarDataset(root, coarse=True)
    assert coarse.num_classes == 20 and [coarse[i][1] for i in range(len(ds))] == [v // 5 for v in y]


def test_cifar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cs.toronto.edu") as e:
        D.CifarDataset(tmp_path / "missing")
    assert "missing" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        D.CifarDataset(tmp_path / "empty")
    make_cifar_dir(tmp_path / "c")
    with open(tmp_path / "c" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2]}, f)
    with pytest.raises(ValueError, match="count mismatch.*data_batch_3.*4 images, 3 labels"):
        D.CifarDataset(tmp_path / "c")
    with open(tmp_path / "c" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, f)
    with pytest.raises(ValueError, match=r"uint8 \[N, 3072\]"):
        D.CifarDataset(tmp_path / "c")
    (tmp_path / "c" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot unpickle"):
        D.CifarDataset(tmp_path / "c")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cifar_batch_is_read_without_running_code(tmp_path):
    """A CIFAR batch pickles numpy arrays only: one naming any other global is refused before it
    runs; the files the authors wrote (Python 2, numpy.core.multiarray) still load."""
    x, y, _, _ = make_cifar_dir(tmp_path / "c")
    path = tmp_path / "c" / "data_batch_1"
    obj = {b"data": x[:6], b"labels": [int(v) for v in y[:6]], b"batch_label": b"batch 1 of 5"}
    old_style = pickle.dumps(obj, protocol=2).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n_reconstruct" in old_style
    path.write_bytes(old_style)
    ds = D.CifarDataset(tmp_path / "c")
    assert np.array_equal(ds.data[:6].numpy().reshape(6, 3072), obj[b"data"])
    marker = tmp_path / "ran"
    with open(path, "wb") as f:
        pickle.dump({b"data": _RunsCode(str(marker)), b"labels": [0]}, f)
    with pytest.raises(ValueError, match=r"cannot unpickle.*names io\.open.*not loaded"):
        D.CifarDataset(tmp_path / "c")
    assert not marker.exists()


# ----------------------------------------------------------------------------- image folder


def test_image_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    arrays = {}
    for cls, n in (("zebra", 2), ("ant", 3)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            a = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
            Image.fromarray(a).save(tmp_path / cls / f"{i}.png")
            arrays[(cls, i)] = a
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    ds = D.ImageFolderDataset(tmp_path)
    assert ds.classes == ["ant", "zebra"] and len(ds) == 5 and ds.num_classes == 2
    x, y = ds[0]
    assert x.shape == (3, 6, 8) and x.dtype == torch.float32 and y == 0
    torch.testing.assert_close(x, torch.from_numpy(arrays[("ant", 0)]).permute(2, 0, 1).float() / 255)
    assert ds[4][1] == 1
    mean, std = ds.compute_stats()
    norm = D.ImageFolderDataset(tmp_path, mean=mean, std=std)
    allx = torch.stack([norm[i][0] for i in range(len(norm))])
    torch.testing.assert_close(allx.mean((0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)

    # make_loaders("folder") on root/train + root/test
    for split in ("train", "test"):
        for cls in ("a", "b"):
            d = tmp_path / "split" / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(d / f"{i}.jpg")
    tr, te, info = D.make_loaders("folder", tmp_path / "split", batch_size=4)
    assert info["num_classes"] == 2 and info["in_chans"] == 3 and info["image_size"] == 16
    xb, yb = next(iter(tr))
    assert xb.shape == (4, 3, 16, 16)


def test_image_folder_without_pillow_says_pip_install(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_pil(name, *a, **k):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("No module named 'PIL'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    with pytest.raises(ImportError, match="pip install pillow"):
        D.ImageFolderDataset(tmp_path)


# ----------------------------------------------------------------------------- augmentation


def test_flip_really_flips():
    img = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    torch.testing.assert_close(D.RandomHorizontalFlip(p=1.0)(img), img[..., [3, 2, 1, 0]])
    torch.testing.assert_close(D.RandomHorizontalFlip(p=0.0)(img), img)
    flips = [D.RandomHorizontalFlip()(img, torch.Generator().manual_seed(s))[0, 0, 0].item() == 3.0
             for s in range(200)]
    assert 60 < sum(flips) < 140  # about half


def test_crop_keeps_size_and_pads_with_zeros():
    img = torch.rand(3, 32, 32) + 1.0  # no zeros inside the image
    crop = D.RandomCrop(32, padding=4)
    offsets = set()
    for s in range(100):
        out = crop(img, torch.Generator().manual_seed(s))
        assert out.shape == (3, 32, 32)
        inside = out > 0
        rows, cols = inside[0].any(1).nonzero(), inside[0].any(0).nonzero()
        offsets.add((int(rows[0]), int(cols[0])))
        assert inside.sum() == 3 * (int(rows[-1]) - int(rows[0]) + 1) * (int(cols[-1]) - int(cols[0]) + 1)
    assert len(offsets) > 10  # it really moves
    out = D.RandomCrop((20, 24))(img, torch.Generator().manual_seed(0))
    assert out.shape == (3, 20, 24)
    with pytest.raises(ValueError, match="larger than"):
        D.RandomCrop(40)(img)


def test_augmentation_deterministic_under_seed():
    img = torch.rand(3, 32, 32)
    aug = D.Compose([D.RandomCrop(32, padding=4), D.RandomHorizontalFlip()])
    a = aug(img, torch.Generator().manual_seed(123))
    b = aug(img, torch.Generator().manual_seed(123))
    torch.testing.assert_close(a, b)
    outs = {aug(img, torch.Generator().manual_seed(s)).sum().item() for s in range(20)}
    assert len(outs) > 5


# ----------------------------------------------------------------------------- loaders


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_make_loaders_mnist_shapes_info_and_test_order(tmp_path):
    tr_imgs, ytr, te_imgs, yte = make_idx_dir(tmp_path, gz=True)
    tr, te, info = D.make_loaders("mnist", tmp_path, batch_size=8)
    assert info["num_classes"] == 10 and info["in_chans"] == 1 and info["image_size"] == 28
    assert info["train_size"] == 20 and info["test_size"] == 8
    x, y = next(iter(tr))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert tr.dataset.transform is None  # no augmentation for (Fashion-)MNIST by default
    ys = torch.cat([y for _, y in te])
    assert ys.tolist() == yte.tolist()  # test loader: file order
    tr2, _, _ = D.make_loaders("mnist", tmp_path, batch_size=8, augment=True)
    assert isinstance(tr2.dataset.transform, D.RandomCrop) and tr2.dataset.transform.padding == 2
    assert next(iter(tr2))[0].shape == (8, 1, 28, 28)


def test_shuffle_reproducible_per_seed_and_epoch(tmp_path):
    make_idx_dir(tmp_path, n_train=40)
    order = lambda loader: torch.cat([y for _, y in loader]).tolist()  # noqa: E731
    tr_a, _, _ = D.make_loaders("mnist", tmp_path, batch_size=16, seed=7)
    tr_b, _, _ = D.make_loaders("mnist", tmp_path, batch_size=16, seed=7)
    tr_c, _, _ = D.make_loaders("mnist", tmp_path, batch_size=16, seed=8)
    s = tr_a.sampler
    e0, e1 = s.order(0), s.order(1)
    assert sorted(e0) == list(range(40)) and e0 != e1 and e0 != list(range(40))
    assert e0 != tr_c.sampler.order(0)
    # epochs advance by themselves; a resumed loader at epoch 1 sees the same batches
    a0, a1 = order(tr_a), order(tr_a)
    tr_b.sampler.set_epoch(1)
    assert order(tr_b) == a1 and a0 != a1
    labels = tr_a.dataset.targets
    assert a1 == labels[e1].tolist()
    tr_b.sampler.set_epoch(0)
    assert order(tr_b) == a0


def test_cifar_loader_augmentation_reproducible_and_worker_independent(tmp_path):
    make_cifar_dir(tmp_path)
    tr, te, info = D.make_loaders("cifar10", tmp_path, batch_size=10, seed=3)
    assert info == {**info, "num_classes": 10, "in_chans": 3, "image_size": 32}
    assert isinstance(tr.dataset.transform, D.Compose)
    tr2, _, _ = D.make_loaders("cifar10", tmp_path, batch_size=10, seed=3, num_workers=2)
    e_a = _epoch(tr)
    e_b = _epoch(tr2)
    for (xa, ya), (xb, yb) in zip(e_a, e_b):
        torch.testing.assert_close(xa, xb)
        assert ya.tolist() == yb.tolist()
    tr.sampler.set_epoch(0)  # replaying epoch 0 (resume) gives the same augmented batches
    torch.testing.assert_close(_epoch(tr)[0][0], e_a[0][0])
    # a sample's augmentation is fixed by its seed, changes with it, and really augments
    ds, plain = tr.dataset, D.CifarDataset(tmp_path, train=True)
    order0 = tr.sampler.order(0)
    torch.testing.assert_close(e_a[0][0][0], ds[(order0[0], D._mix(3, 0, 0xA06))][0])
    aug = torch.stack([ds[(0, s)][0] for s in range(8)])
    torch.testing.assert_close(aug, torch.stack([ds[(0, s)][0] for s in range(8)]))
    assert len({a.sum().item() for a in aug}) > 4
    assert sum(not torch.equal(a, plain[0][0]) for a in aug) >= 6
    x_test, _ = next(iter(te))  # the test loader never augments
    torch.testing.assert_close(x_test[0], D.CifarDataset(tmp_path, train=False)[0][0])
    _, _, info100 = D.make_loaders("cifar100", _cifar100(tmp_path), batch_size=4)
    assert info100["num_classes"] == 100
    with pytest.raises(ValueError, match="holds cifar10 files, not cifar100"):
        D.make_loaders("cifar100", tmp_path)


def _cifar100(tmp_path):
    root = tmp_path / "c100"
    make_cifar_dir(root, variant="cifar100")
    return root


def test_make_loaders_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        D.make_loaders("svhn", tmp_path)
    monkeypatch.setattr(D, "FASHION_MNIST_DIR", str(tmp_path / "not-installed") + "/")
    with pytest.raises(FileNotFoundError) as e:
        D.make_loaders("fashion-mnist")
    assert "apt-get install dataset-fashion-mnist" in str(e.value) and "not-installed" in str(e.value)
    with pytest.raises(FileNotFoundError, match="train/ and a test/"):
        D.make_loaders("folder", tmp_path)
    with pytest.raises(FileNotFoundError, match="no directory given"):
        D.make_loaders("cifar10")


@pytest.mark.skipif(not os.path.isdir(D.FASHION_MNIST_DIR),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_first_batch():
    tr, te, info = D.make_loaders("fashion-mnist", batch_size=64)
    assert len(tr.dataset) == 60000 and len(te.dataset) == 10000
    assert info["num_classes"] == 10 and info["in_chans"] == 1 and info["image_size"] == 28
    assert info["mean"][0] == pytest.approx(0.2860, abs=1e-3) and info["std"][0] == pytest.approx(0.3530, abs=1e-3)
    x, y = next(iter(tr))
    assert x.shape == (64, 1, 28, 28) and y.shape == (64,) and 0 <= int(y.min()) and int(y.max()) <= 9
    xt, yt = next(iter(te))
    assert xt.shape == (64, 1, 28, 28)
