"""Broadcast shapes: the one place that pads a shape with leading ones or lays a vector
along one dim of an n-d tensor (numpy arrays and torch tensors alike)."""
from __future__ import annotations


def padded_shape(shape, ndim: int) -> tuple:
    """``shape`` with leading ones up to ``ndim`` dims (numpy/torch broadcasting)."""
    shape = tuple(shape)
    return (1,) * (ndim - len(shape)) + shape


def left_pad(x, ndim: int):
    """``x`` reshaped to ``ndim`` dims by leading ones, so it broadcasts like its own shape."""
    return x.reshape(padded_shape(x.shape, ndim))


def along(x, dim: int, ndim: int):
    """The 1-d ``x`` reshaped to lie along ``dim`` of an ``ndim``-d tensor (size 1 elsewhere)."""
    shape = [1] * ndim
    shape[dim] = -1
    return x.reshape(shape)
