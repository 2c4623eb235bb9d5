"""How measurements sit in the database, and back: packed binary columns and NULL for NaN.

Every byte layout the server stores is written and read here, and nowhere
else: histogram counts (delta- and bit-packed with their float32 range, see
`pack_histograms`) and edges (float64), unit means and attributions
(float32), probe features and maps (float16), class indices (int32),
attribution deltas (float64) and cached embedding coordinates (float32
pairs). All are little-endian, in C order.
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


# A stored histogram's ``counts`` column: one flags byte, then lo and hi as float32 when
# BOUNDS is set (the ``lo``/``hi`` columns are then NULL), then the counts: as uint64
# when WIDE is set, else the differences between neighbouring bins (the first against
# 0), zigzag-coded (0, -1, 1, -2 -> 0, 1, 2, 3), in groups of `_GROUP` values, each a
# byte giving its width w in bits, then w bytes: value i of the group in bits
# [i * w, (i + 1) * w), least significant first. Neighbouring bins of a smooth
# distribution differ little and its tails are near zero: 64 bins of a 65,536-sample
# histogram take about 60 bytes, not 256.
BOUNDS = 0x01
WIDE = 0x02
_GROUP = 8
_DELTA_LIMIT = 1 << 61  # larger counts could overflow a zigzag-coded difference


def pack_histograms(
    counts: Sequence[Sequence[int] | bytes],
    lo: Sequence[float | None],
    hi: Sequence[float | None],
) -> tuple[list[bytes], list[float | None], list[float | None]]:
    """Histograms packed for the ``counts`` column, with what stays in ``lo`` and ``hi``.

    ``counts`` are lists of integers or packed uint32 (as the client sends them);
    bounds exactly representable as float32 (the client's are) go into the packed
    bytes, others stay in their columns.
    """
    n = len(counts)
    bounds = np.array([np.nan if v is None else v for v in (*lo, *hi)], dtype=np.float64)
    with np.errstate(over="ignore"):  # beyond float32's range: not the same, kept as is
        same = (bounds.astype(np.float32).astype(np.float64) == bounds) | np.isnan(bounds)
    given = np.array([v is not None for v in (*lo, *hi)], dtype=bool)
    inside = (same & given).reshape(2, n).all(axis=0).tolist()  # both bounds fit float32
    with np.errstate(over="ignore"):  # those beyond float32 stay outside anyway
        pairs = bounds.astype("<f4").reshape(2, n).T.copy()  # (n, 2): the bounds inside
    packed: list[bytes] = [b""] * n
    by_bins: dict[int, list[int]] = {}
    for i, values in enumerate(counts):
        by_bins.setdefault(len(values) // 4 if isinstance(values, bytes) else len(values),
                           []).append(i)  # fmt: skip
    for bins, rows in by_bins.items():
        chosen = [counts[i] for i in rows]
        if all(isinstance(values, bytes) for values in chosen):  # as the client sends them
            packed_u4 = b"".join(chosen)  # type: ignore[arg-type]
            matrix = np.frombuffer(packed_u4, dtype="<u4").astype(np.int64).reshape(-1, bins)
        else:
            matrix = np.empty((len(rows), bins), dtype=np.int64)  # (histograms, bins)
            for j, values in enumerate(chosen):
                if isinstance(values, bytes):
                    matrix[j] = np.frombuffer(values, dtype="<u4")
                else:
                    matrix[j] = np.array(values, dtype=np.uint64).astype(np.int64)
        chosen_inside = np.array([inside[i] for i in rows], dtype=bool)
        blobs = _pack_counts(matrix, pairs[rows], chosen_inside)
        for j, blob in zip(rows, blobs, strict=True):
            packed[j] = blob
    kept_lo = [None if inside[i] else lo[i] for i in range(n)]
    kept_hi = [None if inside[i] else hi[i] for i in range(n)]
    return packed, kept_lo, kept_hi


def _pack_counts(matrix: Ints, bounds: npt.NDArray[np.float32], inside: npt.NDArray[np.bool_]
                 ) -> list[bytes]:  # fmt: skip
    """(histograms, bins) counts, with (histograms, 2) float32 bounds where ``inside``, as
    the flags byte, the bounds and the groups (see above): one blob each."""
    n, bins = matrix.shape
    wide = (matrix >= _DELTA_LIMIT).any(axis=1) | (matrix < 0).any(axis=1)
    groups = -(-bins // _GROUP)
    delta = np.diff(matrix, axis=1, prepend=0)  # (n, bins)
    zigzag = ((delta << 1) ^ (delta >> 63)).astype(np.uint64)
    zigzag[wide] = 0
    padded = np.zeros((n, groups * _GROUP), dtype=np.uint64)
    padded[:, :bins] = zigzag
    grouped = padded.reshape(n, groups, _GROUP)
    top = grouped.max(axis=2)  # (n, groups)
    # bit lengths from the float exponent: exact below 2**53, at worst one bit more above
    widths = np.where(top > 0, np.frexp(top.astype(np.float64))[1], 0).astype(np.int64)
    head = 1 + 8 * inside.astype(np.int64)  # (n,): the flags byte, and the bounds
    sizes = 1 + widths  # (n, groups): the width byte and its values
    offsets = head[:, None] + np.cumsum(sizes, axis=1) - sizes
    totals = head + sizes.sum(axis=1)
    starts = np.cumsum(totals) - totals
    buffer = np.zeros(int(totals.sum()), dtype=np.uint8)
    buffer[starts] = np.where(inside, BOUNDS, 0)
    if inside.any():
        chosen = starts[inside]
        buffer[chosen[:, None] + 1 + np.arange(8)] = bounds[inside].view(np.uint8).reshape(-1, 8)
    at = starts[:, None] + offsets  # (n, groups): where each group's width byte is
    buffer[at] = widths
    for width in np.unique(widths).tolist():
        if width == 0:
            continue
        rows, cols = np.nonzero(widths == width)
        values = grouped[rows, cols].astype("<u8")  # (k, GROUP)
        # each value's bits, least significant first: (k, GROUP, 64), keep the low `width`
        bits = np.unpackbits(values.view(np.uint8).reshape(len(rows), _GROUP, 8), axis=2,
                             bitorder="little")  # fmt: skip
        payload = np.packbits(bits[:, :, :width].reshape(len(rows), -1), axis=1,
                              bitorder="little")  # fmt: skip
        buffer[at[rows, cols][:, None] + 1 + np.arange(width)] = payload  # (k, width)
    blobs = [buffer[a : a + t].tobytes() for a, t in zip(starts.tolist(), totals.tolist(),
                                                          strict=True)]  # fmt: skip
    for i in np.flatnonzero(wide).tolist():
        flags = WIDE | (BOUNDS if inside[i] else 0)
        kept = bounds[i].tobytes() if inside[i] else b""
        blobs[i] = bytes([flags]) + kept + matrix[i].astype("<u8").tobytes()
    return blobs


def unpack_histogram_counts(blobs: Sequence[bytes], bins: Sequence[int]) -> list[Ints]:
    """The counts of many packed histograms, decoded together (one pass per group of
    bins, not one per histogram)."""
    out: list[Ints] = [np.zeros(0, dtype=np.int64)] * len(blobs)
    by_bins: dict[int, list[int]] = {}
    for i, (blob, n) in enumerate(zip(blobs, bins, strict=True)):
        if blob[0] & WIDE:
            skip = 9 if blob[0] & BOUNDS else 1
            out[i] = np.frombuffer(blob, dtype="<u8", offset=skip).astype(np.int64)
        else:
            by_bins.setdefault(n, []).append(i)
    for n, rows in by_bins.items():
        for i, counts in zip(rows, _unpack_grouped([blobs[i] for i in rows], n), strict=True):
            out[i] = counts
    return out


def _unpack_grouped(blobs: Sequence[bytes], bins: int) -> list[Ints]:
    buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    lengths = np.array([len(blob) for blob in blobs], dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    flags = buffer[starts]
    position = starts + 1 + np.where(flags & BOUNDS, 8, 0)  # (n,): the first width byte
    groups = -(-bins // _GROUP)
    values = np.zeros((len(blobs), groups, _GROUP), dtype=np.uint64)
    for group in range(groups):
        widths = buffer[position].astype(np.int64)
        for width in np.unique(widths).tolist():
            if width == 0:
                continue
            rows = np.flatnonzero(widths == width)
            payload = buffer[position[rows, None] + 1 + np.arange(width)]  # (k, width)
            bits = np.unpackbits(payload, axis=1, bitorder="little")  # (k, width * 8)
            full = np.zeros((len(rows), _GROUP, 64), dtype=np.uint8)
            full[:, :, :width] = bits.reshape(len(rows), _GROUP, width)
            packed = np.packbits(full, axis=2, bitorder="little")  # (k, GROUP, 8) bytes
            values[rows, group] = packed.view("<u8")[:, :, 0]
        position = position + 1 + widths
    zigzag = values.reshape(len(blobs), -1)[:, :bins]
    delta = (zigzag >> np.uint64(1)).astype(np.int64) ^ -(zigzag & np.uint64(1)).astype(np.int64)
    return list(np.cumsum(delta, axis=1))


def unpack_bounds(blob: bytes, lo: float | None, hi: float | None) -> tuple[float, float]:
    """A stored histogram's range: from its packed bytes, or its columns (None is NaN)."""
    if blob[0] & BOUNDS:
        low, high = struct.unpack_from("<2f", blob, 1)
        return float(low), float(high)
    return (np.nan if lo is None else lo), (np.nan if hi is None else hi)


def pack_edges(edges: Sequence[float]) -> bytes:
    return struct.pack(f"<{len(edges)}d", *edges)


def unpack_edges(data: bytes) -> Floats:
    return np.frombuffer(data, dtype="<f8").astype(np.float64)


def unpack_histograms(rows: Sequence[SqlHistogram]) -> list[Histogram]:
    """Stored histograms' counts and edges: explicit, or ``bins`` equal bins over [lo, hi]."""
    counts = unpack_histogram_counts([row.counts for row in rows], [row.bins for row in rows])
    found = []
    for row, values in zip(rows, counts, strict=True):
        if row.edges is not None:
            edges = unpack_edges(row.edges)
        else:
            lo, hi = unpack_bounds(row.counts, row.lo, row.hi)
            edges = np.linspace(lo, hi, row.bins + 1)
        found.append(Histogram(edges, values))
    return found


def unpack_histogram(row: SqlHistogram) -> Histogram:
    """One stored histogram (see `unpack_histograms` for many)."""
    return unpack_histograms([row])[0]


# -- histogram counts as stored before revision 0009 (the migration reads and writes them)


def pack_counts(counts: Sequence[int] | bytes) -> bytes:
    """Counts as uint32 when they all fit, else uint64; packed uint32 kept as they are."""
    if isinstance(counts, bytes):
        return counts
    try:
        return struct.pack(f"<{len(counts)}I", *counts)
    except struct.error:  # a count of 2**32 or more
        return struct.pack(f"<{len(counts)}Q", *counts)


def unpack_counts(data: bytes, bins: int) -> Ints:
    """``bins`` counts packed by `pack_counts` (the width follows from the length), as int64."""
    if bins == 0:
        return np.zeros(0, dtype=np.int64)
    dtype = "<u4" if len(data) // bins == 4 else "<u8"
    return np.frombuffer(data, dtype=dtype).astype(np.int64)


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
