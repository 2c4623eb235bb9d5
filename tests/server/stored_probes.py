"""Probes read back over HTTP and decoded as the client packed them, for the view tests.

Every number a probe view shows is recomputed from the probe as stored
(``GET /runs/{id}/probes/{step}``: base64 of little-endian float16 features
and maps, float32 attributions, int32 classes), with NumPy.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np


def _unpack(data: str, dtype: str, shape: Sequence[int]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data), dtype=dtype).reshape(shape)


class StoredProbe:
    """The probe of a run at one step, as stored."""

    def __init__(self, api: httpx.Client, run_id: str, step: int) -> None:
        response = api.get(f"/runs/{run_id}/probes/{step}")
        response.raise_for_status()
        self.raw: dict[str, Any] = response.json()
        self.labels = self._ints("labels")
        self.predictions = self._ints("predictions")

    def _ints(self, field: str) -> np.ndarray | None:
        value = self.raw[field]
        return None if value is None else _unpack(value, "<i4", [self.raw["samples"]])

    def layer(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = next(layer for layer in self.raw["layers"] if layer["name"] == name)
        return found

    def features(self, name: str) -> np.ndarray:
        layer = self.layer(name)
        return _unpack(layer["features"], "<f2", layer["features_shape"]).astype(np.float64)

    def maps(self, name: str) -> np.ndarray:
        layer = self.layer(name)
        return _unpack(layer["maps"], "<f2", layer["maps_shape"]).astype(np.float64)

    def attributions(self) -> np.ndarray:
        explained = self.raw["attributions"]
        return _unpack(explained["values"], "<f4", explained["shape"]).astype(np.float64)

    def attribution_targets(self) -> np.ndarray:
        explained = self.raw["attributions"]
        return _unpack(explained["targets"], "<i4", explained["shape"][:1])


def assert_same_up_to_sign(actual: np.ndarray, expected: np.ndarray) -> None:
    """PCA axes are defined up to their sign: compare each column either way."""
    for column in range(expected.shape[1]):
        a, e = actual[:, column], expected[:, column]
        sign = 1.0 if np.dot(a, e) >= 0 else -1.0
        np.testing.assert_allclose(sign * a, e, rtol=1e-4, atol=1e-4)
