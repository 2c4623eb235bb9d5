"""What `layerwatch.Api` queries return: measurements decoded into NumPy arrays.

The server answers NaN and infinities as the JSON strings "NaN", "Infinity" and
"-Infinity"; every float array here holds them as float64 values again.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from layerwatch import wire
from layerwatch.codec import unpack_float16, unpack_float32, unpack_int32

if TYPE_CHECKING:
    import pandas  # type: ignore[import-not-found, import-untyped, unused-ignore]

__all__ = [
    "Finding", "Histogram", "ProbeData", "Project", "Series", "floats", "ints", "padded"
]  # fmt: skip

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


def floats(values: Iterable[float | str | None]) -> Floats:
    """JSON numbers, with NaN and infinities as strings, as float64; None is NaN."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def ints(values: Iterable[int]) -> Ints:
    return np.array(list(values), dtype=np.int64)


def padded(rows: Sequence[Sequence[float | str]]) -> Floats:
    """Rows of floats as a (rows, longest row) matrix, NaN where a row is shorter."""
    width = max((len(row) for row in rows), default=0)
    matrix = np.full((len(rows), width), np.nan, dtype=np.float64)
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = floats(row)
    return matrix


@dataclass(frozen=True, eq=False)
class Series:
    """One statistic or scalar over steps: `values[i]` was recorded at `steps[i]`."""

    name: str
    steps: Ints
    values: Floats
    downsampled: bool = False

    def to_pandas(self) -> pandas.Series:
        """A `pandas.Series` of the values indexed by step (needs `pip install pandas`)."""
        try:
            pd = importlib.import_module("pandas")
        except ImportError as error:
            raise ImportError(
                "Series.to_pandas() needs pandas, which is not installed: pip install pandas"
            ) from error
        return pd.Series(self.values, index=pd.Index(self.steps, name="step"), name=self.name)

    def __len__(self) -> int:
        return len(self.steps)


@dataclass(frozen=True, eq=False)
class Histogram:
    """Bin counts at one step: `counts[i]` elements in `[edges[i], edges[i + 1])`.

    `sample_size` is how many elements they were estimated from; None when the
    counts cover every finite element.
    """

    step: int
    edges: Floats
    counts: Ints
    sample_size: int | None


@dataclass(frozen=True, eq=False)
class ProbeData:
    """A probe: every probed layer's output on the fixed probe inputs at one step.

    `features[layer]` is `(samples, ...)` float32 (sent as float16); `maps[layer]`
    the full-resolution maps of the first samples of a convolution output, where
    sent. `labels` and `predictions` are `(samples,)` class indices, None when not
    sent; `attributions` the integrated gradients `(n, *input shape)` of the first
    `n` samples toward the classes in `attribution_targets`.
    """

    step: int
    samples: int
    labels: Ints | None
    predictions: Ints | None
    features: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    maps: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    attributions: npt.NDArray[np.float32] | None = None
    attribution_targets: Ints | None = None

    @classmethod
    def decode(cls, probe: wire.Probe) -> ProbeData:
        """The arrays of a probe as the server sends it (packed little-endian, base64)."""
        result = cls(probe.step, probe.samples, _int32(probe.labels), _int32(probe.predictions))
        for layer in probe.layers:
            result.features[layer.name] = unpack_float16(layer.features, layer.features_shape)
            if layer.maps is not None and layer.maps_shape is not None:
                result.maps[layer.name] = unpack_float16(layer.maps, layer.maps_shape)
        explained = probe.attributions
        if explained is None:
            return result
        return cls(
            result.step, result.samples, result.labels, result.predictions, result.features,
            result.maps, unpack_float32(explained.values, explained.shape),
            unpack_int32(explained.targets),
        )  # fmt: skip


@dataclass(frozen=True)
class Finding:
    """One thing the server's diagnosis found wrong with a run (see the README's Diagnosis).

    ``tensor`` and ``tensor_kind`` name the tensor it concerns, ``scalar`` the loss;
    ``step`` is the first step at which it holds; ``view`` the relative URL of the
    plot that shows it.
    """

    kind: str
    severity: str  # "error", "warning" or "info"
    step: int
    last_step: int | None
    tensor: str | None
    tensor_kind: str | None
    scalar: str | None
    confidence: float
    message: str
    evidence: dict[str, object]
    view: str

    @classmethod
    def from_json(cls, data: Any) -> Finding:
        last = data.get("last_step")
        return cls(
            kind=str(data["kind"]), severity=str(data["severity"]), step=int(data["step"]),
            last_step=None if last is None else int(last), tensor=data.get("tensor"),
            tensor_kind=data.get("tensor_kind"), scalar=data.get("scalar"),
            confidence=float(data["confidence"]), message=str(data["message"]),
            evidence=dict(data.get("evidence") or {}), view=str(data["view"]),
        )  # fmt: skip


@dataclass(frozen=True)
class Project:
    name: str
    created_at: datetime
    runs: int


def _int32(data: bytes | None) -> Ints | None:
    return None if data is None else unpack_int32(data)
