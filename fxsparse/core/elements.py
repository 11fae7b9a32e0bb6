"""Channel elements and their coupling classes.

Every prunable channel that some layer creates (an output channel of a conv, a row of a
linear) is an *element*. Ops that tie channels together (a residual add, a depthwise
conv, an attention head) put elements in one *class* with a union-find. A class is the
unit that is kept or pruned; a class gets a *reason* when it must never be pruned.

Tensors carry their elements as an ``ids`` array: an int64 numpy array that broadcasts
to the tensor's shape (size 1 along dims that carry no channel), -1 where a position
holds no prunable element.
"""
from __future__ import annotations

import numpy as np

NO_ELEMENT = -1


class ElementTable:
    def __init__(self):
        self._parent: list[int] = []
        self._reason: dict[int, str] = {}
        self._array = np.zeros(0, dtype=np.int64)  # a numpy copy of _parent for canonical()
        self._changed: list[int] = []  # roots re-parented since the copy was synced

    def __getstate__(self):
        return {"_parent": self._parent, "_reason": self._reason}

    def __setstate__(self, state):
        self.__init__()
        self._parent, self._reason = state["_parent"], state["_reason"]

    def __len__(self):
        return len(self._parent)

    def new(self, count: int) -> np.ndarray:
        base = len(self._parent)
        self._parent.extend(range(base, base + count))
        return np.arange(base, base + count, dtype=np.int64)

    def find(self, e: int) -> int:
        parent = self._parent
        while parent[e] != e:
            parent[e] = parent[parent[e]]
            e = parent[e]
        return e

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb < ra:
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._changed.append(rb)
        moved = self._reason.pop(rb, None)
        if moved is not None:
            self._reason.setdefault(ra, moved)

    def canonical(self, ids: np.ndarray) -> np.ndarray:
        """The same array with every element replaced by its class representative."""
        if ids.size == 0:
            return ids
        has = ids >= 0
        if not has.any():
            return np.full(ids.shape, NO_ELEMENT, dtype=np.int64)
        parent = self._synced()
        roots = parent[np.where(has, ids, 0)]
        while True:  # pointer jumping, vectorised: a root is its own parent
            up = parent[roots]
            if np.array_equal(up, roots):
                break
            roots = up
        return np.where(has, roots, NO_ELEMENT).astype(np.int64, copy=False)

    def _synced(self) -> np.ndarray:
        """The parent array as numpy: new elements appended, re-parented roots copied over
        (path compression in find only shortcuts to ancestors, so the copy stays valid)."""
        if len(self._array) < len(self._parent):
            self._array = np.concatenate([self._array, np.arange(len(self._array), len(self._parent), dtype=np.int64)])
        if self._changed:
            idx = np.array(self._changed, dtype=np.int64)
            self._array[idx] = [self._parent[i] for i in self._changed]
            self._changed = []
        return self._array

    def union_pairs(self, a: np.ndarray, b: np.ndarray) -> None:
        """Union a[i] with b[i] wherever both hold an element (arrays broadcast)."""
        a, b = np.broadcast_arrays(a, b)
        keep = (a >= 0) & (b >= 0)
        if not keep.any():
            return
        a, b = self.canonical(a[keep]), self.canonical(b[keep])
        differ = a != b  # pairs already in one class need no union
        if not differ.any():
            return
        pairs = np.unique(np.stack([a[differ], b[differ]], axis=1), axis=0)
        for x, y in pairs.tolist():
            self.union(x, y)

    def union_all(self, ids: np.ndarray) -> None:
        vals = np.unique(ids[ids >= 0])
        for v in vals[1:].tolist():
            self.union(int(vals[0]), v)

    def mark_unprunable(self, ids: np.ndarray | None, reason: str) -> None:
        if ids is None:
            return
        for v in np.unique(ids[ids >= 0]).tolist():
            self._reason.setdefault(self.find(v), reason)

    def reason(self, e: int) -> str | None:
        return self._reason.get(self.find(e))

    def reasons(self) -> dict[int, str]:
        """{class root: reason} for every class that must never be pruned."""
        return {self.find(root): text for root, text in self._reason.items()}


def varying_dims(ids: np.ndarray) -> list[int]:
    """Dims along which ``ids`` (already canonical) is not constant."""
    out = []
    for d in range(ids.ndim):
        if ids.shape[d] > 1:
            first = np.take(ids, [0], axis=d)
            if not np.array_equal(np.broadcast_to(first, ids.shape), ids):
                out.append(d)
    return out


def compress(ids: np.ndarray) -> np.ndarray:
    """Shrink ``ids`` to size 1 along every dim where it does not vary."""
    for d in range(ids.ndim):
        if ids.shape[d] > 1 and d not in varying_dims(ids):
            ids = np.take(ids, [0], axis=d)
    return ids


def has_elements(ids: np.ndarray | None) -> bool:
    return ids is not None and bool((ids >= 0).any())
