"""Reading the PNGs, JSON twins and errors the gallery answers, for the view tests."""

from __future__ import annotations

import io
import struct
from typing import Any

import httpx
import numpy as np
from matplotlib.image import imread

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DOWNSAMPLED = "x-layerwatch-downsampled"


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which a PNG must start with."""
    assert png[:8] == PNG_SIGNATURE
    length, chunk = struct.unpack(">I4s", png[8:16])
    assert (length, chunk) == (13, b"IHDR")
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def pixels(png: bytes) -> np.ndarray:
    return imread(io.BytesIO(png), format="png")


def assert_drawn(png: bytes, width: int = 900, height: int = 500) -> None:
    """A PNG of that size with something on it."""
    assert png_size(png) == (width, height)
    image = pixels(png)
    assert image.shape[:2] == (height, width)
    assert image[..., :3].std() > 0.01  # not a blank canvas


def view(api: httpx.Client, run_id: str, name: str, **params: Any) -> dict[str, Any]:
    """The JSON twin of view `name`, which must answer 200 for the run."""
    response = api.get(f"/runs/{run_id}/plots/{name}.json", params=params)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    assert (data["view"], data["run_id"]) == (name, run_id)
    return data


def png(api: httpx.Client, run_id: str, name: str, **params: Any) -> httpx.Response:
    """The PNG answer of view `name`, which must answer 200 for the run."""
    response = api.get(f"/runs/{run_id}/plots/{name}.png", params=params)
    assert response.status_code == 200, response.text
    return response


def floats(values: Any) -> np.ndarray:
    """JSON numbers (with "NaN"/"Infinity" strings) as float64."""
    return np.array(values, dtype=np.float64)


def assert_error(response: httpx.Response, status: int, *names: str) -> None:
    assert response.status_code == status, response.text
    for name in names:
        assert name in response.text
