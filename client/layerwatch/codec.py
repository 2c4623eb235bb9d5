"""Decoders of the packed arrays that `wire` payloads carry, as NumPy arrays.

Packed fields are base64 (pydantic decodes that) of little-endian values in C
order: float16 probe features and feature maps, int32 labels, predictions and
attribution targets, float32 attributions and unit means, uint32 histogram counts.
The server has its own codec for what it stores (`layerwatch_server.store.codec`);
a test checks that each decodes what the other packs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["unpack_counts", "unpack_float16", "unpack_float32", "unpack_int32"]


def unpack_float16(data: bytes, shape: Sequence[int]) -> npt.NDArray[np.float32]:
    """Little-endian float16 values (probe features, maps) as a float32 array of `shape`."""
    return np.frombuffer(data, dtype="<f2").astype(np.float32).reshape(tuple(shape))


def unpack_float32(data: bytes, shape: Sequence[int] | None = None) -> npt.NDArray[np.float32]:
    """Little-endian float32 values (attributions, unit means), flat or of `shape`."""
    values = np.frombuffer(data, dtype="<f4").astype(np.float32)
    return values if shape is None else values.reshape(tuple(shape))


def unpack_int32(data: bytes) -> npt.NDArray[np.int64]:
    """Little-endian int32 values (labels, predictions, targets) as int64."""
    return np.frombuffer(data, dtype="<i4").astype(np.int64)


def unpack_counts(data: bytes) -> npt.NDArray[np.int64]:
    """Little-endian uint32 histogram counts as int64."""
    return np.frombuffer(data, dtype="<u4").astype(np.int64)
