"""Everything the detectors read, loaded from the store once per request.

Long runs are thinned: at most `MAX_STEPS` evenly spaced captured steps per
tensor, plus the exact first step with a non-finite statistic, so a 100k-step
run costs about what a 2k-step run does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session

from layerwatch_server.models import SqlUnitMean
from layerwatch_server.store import measurements
from layerwatch_server.store.scalars import read_scalar, require_scalars
from layerwatch_server.store.sentinel import nonfinite_events

Floats = npt.NDArray[np.float64]

MAX_STEPS = 2000
"""Captured steps read per tensor: enough to see any trend, cheap on a 100k-step run."""
MAX_UNIT_STEPS = 200
"""Steps of per-unit means read per layer: a (steps, units) matrix each, so fewer."""
MAX_SCALAR_POINTS = 4000
"""Points of a loss read: thinned evenly by position (not enveloped), first and last kept."""
STATS = ("mean", "std", "min", "max", "abs_mean", "l2", "zero_frac", "nonfinite")


@dataclass(frozen=True)
class SentinelEvent:
    """A non-finite value the client saw at a step it did not capture.

    ``kind`` is the tensor's kind (``activation``, ``grad``, ``weight``); ``also``
    names the tensors it spread to at that step.
    """

    step: int
    rank: int
    tensor: str
    kind: str
    also: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    kind: str
    id: int
    module_type: str | None
    row: int  # its row in `RunData.stats`


@dataclass
class RunData:
    """A run's statistics as (tensors, steps) arrays, its loss scalars and unit means."""

    run_id: str
    tensors: list[TensorInfo]
    steps: list[int]
    stats: dict[str, Floats]  # stat (and "present") -> (tensors, steps)
    weight_changes: dict[str, Floats]  # metric -> (tensors, steps), NaN for non-weights
    unit_means: dict[str, tuple[list[int], Floats]]  # activation -> (steps, (steps, units))
    scalars: dict[str, tuple[npt.NDArray[np.int64], Floats]]  # loss-like name -> steps, values
    sentinel_events: list[SentinelEvent] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[TensorInfo]:
        """The run's tensors of ``kind`` in network order."""
        return [t for t in self.tensors if t.kind == kind]

    def find(self, name: str, kind: str) -> TensorInfo | None:
        return next((t for t in self.tensors if t.name == name and t.kind == kind), None)

    def series(self, tensor: TensorInfo, stat: str) -> tuple[npt.NDArray[np.int64], Floats]:
        """(steps, values) of one statistic at the steps the tensor was captured."""
        present = self.stats["present"][tensor.row] == 1.0
        steps = np.asarray(self.steps, dtype=np.int64)
        return steps[present], self.stats[stat][tensor.row][present]

    def parameter_order(self) -> list[str]:
        """Parameter names in network order: by their module's first activation, then as
        their weights were registered (a parameter of no watched module goes last)."""
        position = {t.name: i for i, t in enumerate(self.of_kind("activation"))}
        names = list(dict.fromkeys(t.name for t in self.tensors if t.kind in ("weight", "grad")))
        registered = {name: i for i, name in enumerate(names)}

        def key(name: str) -> tuple[int, int]:
            module = name.rsplit(".", 1)[0] if "." in name else ""
            return position.get(module, len(position)), registered[name]

        return sorted(names, key=key)


def is_loss(name: str) -> bool:
    return "loss" in name.lower()


def load_run_data(session: Session, run_id: str) -> RunData:
    """Read what every detector needs for rank 0 of ``run_id``; raises when there is no run."""
    rows = measurements.list_tensor_rows(session, run_id)
    tensors = [TensorInfo(name, kind, i, module_type, row)
               for row, (name, kind, i, module_type) in enumerate(rows)]  # fmt: skip
    ids = [t.id for t in tensors]
    steps = measurements.thinned_steps(session, ids, max_steps=MAX_STEPS)
    first_bad = measurements.first_nonfinite_step(session, ids)
    if first_bad is not None and first_bad not in steps:
        steps = sorted({*steps, first_bad})
    stats = measurements.get_stat_table(session, ids, stats=STATS, steps=steps)
    changes = measurements.get_weight_change_table(session, ids, steps=steps)

    unit_means: dict[str, tuple[list[int], Floats]] = {}
    with_units = {
        i for _, i in measurements.list_tensor_ids(session, run_id, kind="activation",
                                                   table=SqlUnitMean)
    }  # fmt: skip
    for tensor in tensors:
        if tensor.kind == "activation" and tensor.id in with_units:
            unit_steps = measurements.list_steps(session, SqlUnitMean, [tensor.id])
            unit_steps = measurements.thin_evenly(unit_steps, MAX_UNIT_STEPS)
            means, _ = measurements.get_unit_means_at(session, tensor.id, steps=unit_steps)
            unit_means[tensor.name] = (unit_steps, means)

    scalars: dict[str, tuple[npt.NDArray[np.int64], Floats]] = {}
    for name in require_scalars(session, run_id):
        if is_loss(name):
            logged, values = read_scalar(session, run_id, name)
            keep = measurements.thin_evenly(list(range(len(values))), MAX_SCALAR_POINTS)
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:  # the exact first non-finite value survives the thinning
                keep = sorted({*keep, int(bad[0])})
            scalars[name] = (logged[keep], values[keep])

    return RunData(
        run_id=run_id,
        tensors=tensors,
        steps=steps,
        stats=stats,
        weight_changes=changes,
        unit_means=unit_means,
        scalars=scalars,
        sentinel_events=[
            SentinelEvent(step=e.step, rank=e.rank, tensor=e.tensor, kind=e.kind, also=e.also)
            for e in nonfinite_events(session, run_id)
        ],
    )
