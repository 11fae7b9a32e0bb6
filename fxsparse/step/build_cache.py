"""The builds of the last few capacity sets: capacities that come back reuse their capacity model
and compiled graphs; the graphs of a build pushed out are dropped, so torch.compile's
recompile limit never silently sends the step back to eager."""
from __future__ import annotations

import collections
from typing import Callable

from fxsparse.step.build import CapacityBuild
from fxsparse.step.compiler import drop_compiled


class BuildCache:
    """``size``: builds kept, the current one included; ``reused``: whether the last switch
    found its build kept."""

    def __init__(self, size: int = 4):
        self.size = size
        self.current: CapacityBuild | None = None
        self.reused = False
        self._kept: collections.OrderedDict[tuple, CapacityBuild] = collections.OrderedDict()

    def switch(self, caps: tuple[int, ...], make: Callable[[], CapacityBuild]) -> tuple[CapacityBuild, bool]:
        """(the build for ``caps``: a kept one, else ``make()``; whether it is new)."""
        current = self.current
        if current is not None and current.caps != caps:
            self._kept[current.caps] = current
            self._kept.move_to_end(current.caps)
        kept = self._kept.pop(caps, None)
        while len(self._kept) > max(0, self.size - 1):  # the current build counts too
            _, old = self._kept.popitem(last=False)
            drop_compiled(old.codes)
        self.reused = kept is not None
        self.current = kept if kept is not None else make()
        return self.current, kept is None
