"""How measurements sit in the database, and back: packed binary columns and NULL for NaN.

Every byte layout the server stores is written and read here, and nowhere
else: histogram counts (uint32, or uint64 when a count needs it) and edges
(float64), unit means and attributions (float32), probe features and maps
(float16), class indices (int32), attribution deltas (float64) and cached
embedding coordinates (float32 pairs). All are little-endian, in C order.
Probe arrays arrive already packed (base64 on the wire, decoded by
``wire``) and are stored as they came; only reading them needs this module.

It lives in ``store/`` because only the store touches these bytes: ingest
packs them, and the readers (the JSON endpoints, the view queries in
``measurements`` and ``probe_arrays``, the export) unpack them into NumPy
arrays, which is all that the views ever see.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from layerwatch_server.models import SqlHistogram

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


# -- numbers that may be NULL ------------------------------------------------------------


def floats(values: Sequence[float | None]) -> Floats:
    """A column of measurements as float64; NULL (how SQLite stores NaN) becomes NaN."""
    return np.array(values, dtype=np.float64).reshape(len(values))


def float_list(values: Sequence[float | None]) -> list[float]:
    """`floats` as a list, for JSON."""
    listed: list[float] = floats(values).tolist()
    return listed


# -- histograms --------------------------------------------------------------------------


@dataclass(frozen=True)
class Histogram:
    """A stored histogram: ``counts[i]`` elements in ``[edges[i], edges[i + 1]]``."""

    edges: Floats  # (bins + 1,)
    counts: Ints  # (bins,)


def pack_counts(counts: Sequence[int] | bytes) -> bytes:
    """Counts as uint32 when they all fit, else uint64; counts packed by the client as they are.

    The client packs uint32 only; which width a stored row has follows from its
    length and its number of bins (see `unpack_counts`).
    """
    if isinstance(counts, bytes):
        return counts
    try:
        return struct.pack(f"<{len(counts)}I", *counts)
    except struct.error:  # a count of 2**32 or more
        return struct.pack(f"<{len(counts)}Q", *counts)


def unpack_counts(data: bytes, bins: int) -> Ints:
    """``bins`` counts packed by `pack_counts`, as int64."""
    if bins == 0:
        return np.zeros(0, dtype=np.int64)
    dtype = "<u4" if len(data) // bins == 4 else "<u8"
    return np.frombuffer(data, dtype=dtype).astype(np.int64)


def pack_edges(edges: Sequence[float]) -> bytes:
    return struct.pack(f"<{len(edges)}d", *edges)


def unpack_edges(data: bytes) -> Floats:
    return np.frombuffer(data, dtype="<f8").astype(np.float64)


def unpack_histogram(row: SqlHistogram) -> Histogram:
    """A stored histogram's counts and edges: explicit, or ``bins`` equal bins over [lo, hi]."""
    if row.edges is not None:
        edges = unpack_edges(row.edges)
    else:
        lo = np.nan if row.lo is None else row.lo
        hi = np.nan if row.hi is None else row.hi
        edges = np.linspace(lo, hi, row.bins + 1)
    return Histogram(edges, unpack_counts(row.counts, row.bins))


# -- float32, float16, int32 and float64 arrays ------------------------------------------


def pack_float32(values: Any) -> bytes:
    """An array (any shape, anything NumPy converts) as float32, in C order."""
    return np.ascontiguousarray(values, dtype="<f4").tobytes()


def unpack_float32(data: bytes, shape: Sequence[int] = (-1,)) -> npt.NDArray[np.float32]:
    return np.frombuffer(data, dtype="<f4").reshape(shape)


def unpack_unit_means(data: bytes) -> Floats:
    """One step's unit means (float32, one per unit) as float64."""
    return unpack_float32(data).astype(np.float64)


def unpack_float16(data: bytes, shape: Sequence[int]) -> npt.NDArray[np.float32]:
    """Probe features or feature maps (float16) as float32 of ``shape``."""
    return np.frombuffer(data, dtype="<f2").astype(np.float32).reshape(shape)


def unpack_int32(data: bytes) -> Ints:
    """Class indices of probe samples (int32) as int64."""
    return np.frombuffer(data, dtype="<i4").astype(np.int64)


def pack_float64(values: Sequence[float]) -> bytes:
    return np.asarray(values, dtype="<f8").tobytes()


def unpack_float64(data: bytes) -> Floats:
    return np.frombuffer(data, dtype="<f8").astype(np.float64)
