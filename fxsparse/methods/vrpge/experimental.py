"""The structure search's experiment switches: choices the benchmarks and tests measure and a
user does not need (each default is the measured or the only sensible choice). They are not
``fxsparse train`` flags nor options of the public signatures; a benchmark reaches them as
``method_options={"experimental": {"form": "preconditioned"}}`` (plain data, which
travels through a run's JSON config) or ``StructureLearner(..., experimental=ExperimentSwitches(...))``.
"""
from __future__ import annotations

import dataclasses

from ..options import check_choices, check_options

# VR-PGE compiles the search step's indexed kernels, the gather and the optimizer update
# (compile_update=None), only for searches of at least this many steps: two more graphs per
# capacity set, ~30 s cold on a 2-core CPU, save ~9-12 ms per VGG-11 step, so they pay after
# ~3000 steps
COMPILE_UPDATE_STEPS = 3000


@dataclasses.dataclass(frozen=True)
class ExperimentSwitches:
    # the Bernoulli score: "exact" (unbiased) or the authors' "preconditioned" (estimator.py says why not)
    form: str = "exact"
    # weight_masks="sampled": the weight step's loss serves as the first sample's (False: K fresh forwards)
    reuse_loss: bool = True
    # "group": the second sample redraws one group of the first (benchmarks/score_snr.py; no gain measured)
    perturb: str = "all"
    # compile the search step's gather and update (None: for searches of COMPILE_UPDATE_STEPS+ steps)
    compile_update: bool | None = None

    def __post_init__(self):
        check_choices("vrpge", form=(self.form, ("exact", "preconditioned")),
                      perturb=(self.perturb, ("all", "group")), reuse_loss=(self.reuse_loss, (True, False)),
                      compile_update=(self.compile_update, (None, True, False)))

    @classmethod
    def of(cls, value: "ExperimentSwitches | dict | None") -> "ExperimentSwitches":
        """The switches from what a caller passed: None (every default), a dict (from a run's
        ``method_options``; an unknown name raises ValueError) or the switches themselves."""
        if value is None or isinstance(value, cls):
            return value or cls()
        if not isinstance(value, dict):
            raise ValueError(f"vrpge: experimental must be a dict of switches or ExperimentSwitches, got {value!r}")
        return cls(**check_options("vrpge experimental", value, dataclasses.asdict(cls())))
