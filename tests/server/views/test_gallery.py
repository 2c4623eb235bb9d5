"""Every view of the gallery on every gallery run: the runs are there, defaults render, and
no parameters make a view answer 5xx."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from gallery import DETAIL_VIEWS, PROBE_VIEWS, STATISTICS_VIEWS, GalleryRuns
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from images import assert_drawn, png, png_size, view

from layerwatch_server.views import VIEWS


@pytest.mark.parametrize("name", PROBE_VIEWS)
def test_probe_views_render_defaults_on_every_gallery_run(
    api: httpx.Client, gallery_runs: GalleryRuns, name: str
) -> None:
    for kind, run_id in gallery_runs.all.items():
        png = api.get(f"/runs/{run_id}/plots/{name}.png")
        assert png.status_code == 200, (kind, png.text)
        assert png.headers["content-type"] == "image/png"
        assert_drawn(png.content)
        data = view(api, run_id, name)
        assert data["view"] == name
        if kind in ("empty", "single", "odd"):
            assert data["notes"] == [
                f"run `{run_id}` has no probes (rank 0): see `watch(probe=...)`"
            ], kind
        else:
            assert data["notes"] == [], (kind, data["notes"])
    small = api.get(f"/runs/{gallery_runs.cnn}/plots/{name}.png", params={"width": 400,
                    "height": 300, "dpi": 60})  # fmt: skip
    assert_drawn(small.content, 400, 300)


@pytest.mark.parametrize("name", DETAIL_VIEWS)
def test_detail_views_answer_defaults_on_every_gallery_run(
    api: httpx.Client, gallery_runs: GalleryRuns, name: str
) -> None:
    for run, run_id in gallery_runs.all.items():
        data = view(api, run_id, name)
        answer = png(api, run_id, name)
        assert answer.headers["content-type"] == "image/png"
        assert_drawn(answer.content)
        drawn = data.get("rows") or data.get("maps") or data.get("samples")
        if run in ("empty", "single", "odd") or (run == "mlp" and name == "feature-maps"):
            assert not drawn, run
            assert data["notes"], run  # a "no data" image says why
        else:
            assert drawn, run


@pytest.mark.parametrize("name", STATISTICS_VIEWS)
def test_statistics_views_render_defaults_on_every_gallery_run(
    api: httpx.Client, gallery_runs: GalleryRuns, name: str
) -> None:
    for run, run_id in gallery_runs.all.items():
        png = api.get(f"/runs/{run_id}/plots/{name}.png")
        assert png.status_code == 200, (run, png.text)
        assert png.headers["content-type"] == "image/png"
        if run in ("mlp", "cnn"):
            assert_drawn(png.content)
        else:
            assert png_size(png.content) == (900, 500)
        data = view(api, run_id, name)
        if run == "empty":
            assert data["notes"], name  # "no data" says why
    small = api.get(f"/runs/{gallery_runs.mlp}/plots/{name}.png",
                    params={"width": 200, "height": 150, "dpi": 50})  # fmt: skip
    assert small.status_code == 200
    assert png_size(small.content) == (200, 150)


def test_gallery_runs_exist(gallery_runs: GalleryRuns, api: httpx.Client) -> None:
    for name, run_id in gallery_runs.all.items():
        assert api.get(f"/runs/{run_id}").status_code == 200, name
    probes = api.get(f"/runs/{gallery_runs.mlp}/probes").json()["data"]
    assert tuple(p["step"] for p in probes) == gallery_runs.probe_steps
    assert probes[0]["attributions"] == [4, 64]
    cnn = api.get(f"/runs/{gallery_runs.cnn}/probes").json()["data"]
    assert cnn[0]["attributions"] == [4, 1, 8, 8]
    assert any(layer["maps_shape"] for layer in cnn[0]["layers"])


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
