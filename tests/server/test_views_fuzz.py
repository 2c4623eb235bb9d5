"""No parameters make any view of the gallery answer 5xx, on any kind of run."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from gallery import GalleryRuns
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from images import assert_drawn

from layerwatch_server.views import VIEWS

NAMES = ["0", "1", "2", "3", "4", "0.weight", "0.bias", "fc1", "fc1.weight", "nope", "", "loss"]
values = st.one_of(
    st.sampled_from(NAMES),
    st.integers(-2, 2**64),
    st.sampled_from([0, 1, 2, 5, 25, 50, 100, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["true", "false", "NaN", "-1", "x" * 300, "\u00e9", "%00"]),
    st.text(max_size=12),
)


@st.composite
def queries(draw: st.DrawFn, view: str) -> list[tuple[str, str]]:
    """Query pairs mixing the view's own parameters (some repeated) with stray ones."""
    fields = sorted(set(VIEWS[view].params.model_fields) - {"width", "height", "dpi"})
    keys = draw(st.lists(st.sampled_from([*fields, "colour"]), max_size=5))
    return [(key, str(draw(values))) for key in keys]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_view_answers_5xx(api: httpx.Client, gallery_runs: GalleryRuns, data: Any) -> None:
    view = data.draw(st.sampled_from(sorted(VIEWS)))
    run_id = data.draw(st.sampled_from(sorted(gallery_runs.all.values())))
    query = data.draw(queries(view))
    as_png = data.draw(st.booleans())
    if as_png:  # a small image: the sizes are checked elsewhere
        query += [("width", "300"), ("height", "200"), ("dpi", "50")]
    response = api.get(f"/runs/{run_id}/plots/{view}.{'png' if as_png else 'json'}",
                       params=query)  # fmt: skip
    assert response.status_code < 500, (view, query, response.text[:300])
    if response.status_code == 200 and not as_png:
        assert response.json()["view"] == view


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_every_view_renders_every_run_with_defaults(
    api: httpx.Client, gallery_runs: GalleryRuns, view: str
) -> None:
    for name, run_id in gallery_runs.all.items():
        png = api.get(f"/runs/{run_id}/plots/{view}.png", params={"width": 300, "height": 200})
        assert png.status_code == 200, (name, png.text[:300])
        assert_drawn(png.content, 300, 200)  # a picture, or "no data" with its reason
        data = api.get(f"/runs/{run_id}/plots/{view}.json").json()
        assert data["view"] == view
        if name == "empty":
            assert data["notes"], view  # nothing to draw: the twin says why
