"""The dashboard in a real browser against a real server with real training runs.

The runs are the gallery's (`gallery_runs`: digits MLP and CNN trained with the
real client); a live run is made here by posting batches while a page is open.
"""

from __future__ import annotations

import base64
import re

import httpx
import numpy as np
import pytest
from batches import body, make_batch, new_id, scalars_block, stats_block
from gallery import GalleryRuns

pytestmark = pytest.mark.slow


def _drawn_pixels(page, selector: str) -> int:  # type: ignore[no-untyped-def]
    """Pixels with any ink on the first canvas under `selector`: a chart that drew."""
    return int(page.eval_on_selector(selector, """(canvas) => {
        const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        let inked = 0;
        for (let i = 3; i < data.length; i += 4) if (data[i] > 0) inked++;
        return inked;
    }"""))  # fmt: skip


def test_runs_page_lists_and_filters_runs(
    open_page, live_server: str, gallery_runs: GalleryRuns, screenshot
) -> None:  # type: ignore[no-untyped-def]
    page = open_page(live_server)
    page.goto(f"{live_server}/?project=gallery")
    page.wait_for_selector(f"#runs tbody a[href='/runs/{gallery_runs.mlp}']")
    names = page.locator("#runs tbody tr td:nth-child(2)").all_inner_texts()
    assert "digits-mlp" in names
    assert "digits-cnn" in names
    # the latest scalars of each run are columns (the gallery runs log none; the odd run does)
    screenshot(page, "runs")

    page.fill("#f-name", "digits-cnn")
    page.click("#filters button[type=submit]")
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#runs tbody tr')).length === 1"
    )
    assert page.locator("#runs tbody tr td:nth-child(2)").all_inner_texts() == ["digits-cnn"]
    assert "name=digits-cnn" in page.url  # the filter is in the link

    # sorting by a column, from the keyboard
    page.fill("#f-name", "")
    page.click("#filters button[type=submit]")
    page.wait_for_function("() => document.querySelectorAll('#runs tbody tr').length > 2")
    header = page.locator("#runs th[data-key=name]")
    header.focus()
    page.keyboard.press("Enter")
    shown = page.locator("#runs tbody tr td:nth-child(2)").all_inner_texts()
    assert shown == sorted(shown, key=str.lower) or shown == sorted(shown)
    assert header.get_attribute("aria-sort") == "ascending"


def test_run_page_draws_charts_the_layer_table_and_the_model(
    open_page, live_server: str, gallery_runs: GalleryRuns, api: httpx.Client, screenshot
) -> None:  # type: ignore[no-untyped-def]
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": "dash", "name": "with-scalars"})
    steps = list(range(0, 200, 2))
    api.post(f"/runs/{run_id}/batches", content=body(make_batch(
        scalars=[scalars_block("loss", steps, [1.0 / (1 + s) for s in steps])],
    ))).raise_for_status()  # fmt: skip

    page = open_page(live_server)
    page.goto(f"{live_server}/runs/{run_id}")
    page.wait_for_selector("#scalars .chart[data-points='100']")
    assert _drawn_pixels(page, "#scalars .chart canvas") > 500

    page.goto(f"{live_server}/runs/{gallery_runs.mlp}")
    page.wait_for_selector("#layers tbody tr")
    rows = page.locator("#layers tbody tr")
    tensors = rows.locator("td:nth-child(2)").all_inner_texts()
    assert tensors[:3] == ["0", "1", "2"]  # network order: Linear, ReLU, Linear
    assert {"activation", "weight", "grad"} <= set(
        rows.locator("td:nth-child(3)").all_inner_texts()
    )
    assert _drawn_pixels(page, "#layers tbody tr canvas.spark") > 20  # a sparkline drew
    page.wait_for_selector("#model div")
    assert "Linear" in page.inner_text("#model")
    screenshot(page, "run")


def test_run_page_lists_findings_and_marks_the_layers_they_name(
    open_page, live_server: str, api: httpx.Client
) -> None:  # type: ignore[no-untyped-def]
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": "dash", "name": "nan-at-5"})
    nonfinite = [0, 0, 0, 0, 0, 3, 3, 3, 3, 3]
    api.post(f"/runs/{run_id}/batches", content=body(make_batch(stats=[
        stats_block("fc1", range(10), nonfinite=nonfinite, zero_frac=[0.1] * 10),
        stats_block("fc2", range(10), zero_frac=[0.1] * 10),
    ]))).raise_for_status()  # fmt: skip

    page = open_page(live_server)
    page.goto(f"{live_server}/runs/{run_id}")
    page.wait_for_selector("#findings tr.finding.error")
    row = page.locator("#findings tr.finding.error").first
    assert row.locator("td:nth-child(2)").inner_text() == "nonfinite"
    assert row.locator("td:nth-child(3)").inner_text() == "fc1"
    assert "step 5" in row.locator("td:nth-child(5)").inner_text()
    page.wait_for_selector("#layers tr.found")
    assert page.locator("#layers tr.found").evaluate_all(
        "(rows) => rows.map((r) => r.dataset.tensor)"
    ) == ["fc1"]


def test_run_page_says_which_layers_the_probes_left_out(
    open_page, live_server: str, gallery_runs: GalleryRuns, api: httpx.Client
) -> None:  # type: ignore[no-untyped-def]
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": "dash", "name": "probe-gaps"})
    values = np.random.default_rng(0).standard_normal((6, 5)).astype("<f2")
    reason = "a PackedSequence output is not batch-first"
    for step in (10, 20):
        api.post(f"/runs/{run_id}/probes", json={
            "step": step, "samples": 6,
            "labels": base64.b64encode((np.arange(6, dtype="<i4") % 3).tobytes()).decode(),
            "layers": [{"name": "fc", "features_shape": [6, 5],
                        "features": base64.b64encode(values.tobytes()).decode()}],
            "skipped": [{"name": "lstm", "reason": reason}],
        }).raise_for_status()  # fmt: skip

    page = open_page(live_server)
    page.goto(f"{live_server}/runs/{run_id}")
    page.wait_for_selector("#probe-skipped li")
    assert page.locator("#probe-skipped li").all_inner_texts() == [f"lstm: {reason}"]
    assert "2 probes of 6 samples, steps 10\u201320" in page.inner_text("#probes")

    page.goto(f"{live_server}/runs/{gallery_runs.mlp}")  # nothing left out: no list
    page.wait_for_selector("#probes p")
    assert "probes of" in page.inner_text("#probes")
    assert page.locator("#probe-skipped").count() == 0


def test_a_batch_posted_while_the_run_page_is_open_appears_on_its_chart(
    open_page, live_server: str, api: httpx.Client
) -> None:  # type: ignore[no-untyped-def]
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": "dash", "name": "live"}).raise_for_status()
    api.post(f"/runs/{run_id}/batches", content=body(make_batch(
        scalars=[scalars_block("loss", range(10), [float(s) for s in range(10)])],
    ))).raise_for_status()  # fmt: skip
    page = open_page(live_server)
    page.goto(f"{live_server}/runs/{run_id}")
    page.wait_for_selector("#scalars .chart[data-points='10']")
    page.wait_for_selector("#live", state="visible")

    api.post(f"/runs/{run_id}/batches", content=body(make_batch(
        scalars=[scalars_block("loss", range(10, 25), [float(s) for s in range(10, 25)])],
    ))).raise_for_status()  # fmt: skip
    # within the live interval (2 s), with room for a loaded machine
    page.wait_for_selector("#scalars .chart[data-points='25']", timeout=8_000)

    # a finished run stops polling
    api.patch(f"/runs/{run_id}", json={"status": "finished"}).raise_for_status()
    page.wait_for_selector("#live", state="hidden", timeout=8_000)


def test_layer_page_slider_changes_the_histogram(
    open_page, live_server: str, gallery_runs: GalleryRuns, screenshot
) -> None:  # type: ignore[no-untyped-def]
    page = open_page(live_server)
    page.goto(f"{live_server}/runs/{gallery_runs.mlp}/layer?tensor=2&kind=activation&stat=std")
    page.wait_for_selector("#stat-chart .chart[data-points]")
    assert _drawn_pixels(page, "#stat-chart canvas") > 500
    page.wait_for_selector("#hist-chart canvas")
    last = page.inner_text("#hist-chart h3")
    slider = page.locator("#hist-step")
    assert int(slider.get_attribute("max") or 0) > 2
    slider.focus()
    page.keyboard.press("Home")  # keyboard: the first captured step
    page.wait_for_function(
        f"() => document.querySelector('#hist-chart h3').textContent !== {last!r}"
    )
    assert page.inner_text("#hist-chart h3") == "step 0"
    assert re.search(r"[?&]step=0(&|$)", page.url)
    assert _drawn_pixels(page, "#hist-chart canvas") > 200
    page.wait_for_function("() => document.querySelector('#distributions').naturalWidth > 0")
    screenshot(page, "layer")


def test_gallery_images_all_load_and_the_scatter_plays(
    open_page, live_server: str, gallery_runs: GalleryRuns, screenshot
) -> None:  # type: ignore[no-untyped-def]
    page = open_page(live_server)
    page.goto(f"{live_server}/runs/{gallery_runs.cnn}/gallery")
    cards = page.locator(".card")
    # the cards appear once the run's metadata arrived: wait for them before asking each
    page.wait_for_selector(".card img", state="attached")
    page.wait_for_function(
        """() => Array.from(document.querySelectorAll('.card')).every((card) => {
            const img = card.querySelector('img');
            return (!img.hidden && img.complete && img.naturalWidth > 0)
                || !card.querySelector('.empty').hidden;
        })""",
        timeout=90_000,
    )
    broken = page.eval_on_selector_all(
        ".card img:not([hidden])", "(imgs) => imgs.filter((i) => i.naturalWidth === 0).length"
    )
    assert broken == 0
    loaded = page.eval_on_selector_all(
        ".card img:not([hidden])", "(imgs) => imgs.filter((i) => i.naturalWidth > 0).length"
    )
    notes = page.locator(".card .empty:not([hidden])").all_inner_texts()
    assert loaded == cards.count(), notes  # every view has data for the CNN run: none is empty
    screenshot(page, "gallery")

    scatter = page.locator("#view-scatter")
    first_step = scatter.locator("output").inner_text()
    first_src = scatter.locator("img").get_attribute("src")
    scatter.get_by_role("button", name=re.compile("play")).click()
    page.wait_for_function(
        f"""() => document.querySelector('#view-scatter output').textContent !== {first_step!r}
            && document.querySelector('#view-scatter img').getAttribute('src') !== {first_src!r}""",
        timeout=30_000,
    )
    scatter.get_by_role("button", name=re.compile("pause")).click()
    assert "scatter.step=" in page.url  # the frame shown is in the link


def test_compare_overlays_two_runs(
    open_page, live_server: str, gallery_runs: GalleryRuns, api: httpx.Client, screenshot
) -> None:  # type: ignore[no-untyped-def]
    runs = []
    for name, scale in (("cmp-a", 1.0), ("cmp-b", 2.0)):
        run_id = new_id("r")
        api.post("/runs", json={"id": run_id, "project": "dash", "name": name})
        api.post(f"/runs/{run_id}/batches", content=body(make_batch(
            scalars=[scalars_block("loss", range(50), [scale / (1 + s) for s in range(50)])],
        ))).raise_for_status()  # fmt: skip
        api.patch(f"/runs/{run_id}", json={"status": "finished"})
        runs.append(run_id)
    page = open_page(live_server)
    page.goto(f"{live_server}/compare?run={runs[0]}&run={runs[1]}")
    page.wait_for_selector("#scalars .chart canvas")
    legend = page.locator("#scalars .chart .u-legend .u-series").all_inner_texts()
    assert any("cmp-a" in s for s in legend)
    assert any("cmp-b" in s for s in legend)
    assert _drawn_pixels(page, "#scalars .chart canvas") > 500

    page.goto(f"{live_server}/compare?run={gallery_runs.mlp}&run={gallery_runs.cnn}&kind=weight")
    page.wait_for_selector("#histograms img")
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#histograms img'))"
        ".every((img) => img.complete && img.naturalWidth > 0)"
    )
    assert page.locator("#histograms img").count() == 2
    assert _drawn_pixels(page, "#tensor-chart canvas") > 500
    screenshot(page, "compare")


def test_login_keeps_the_token_in_an_httponly_cookie(
    open_page, live_server: str, suite_token: str
) -> None:  # type: ignore[no-untyped-def]
    page = open_page(live_server, signed_in=False)
    page.goto(f"{live_server}/?tag=nothing-has-it")
    assert page.url.startswith(f"{live_server}/login?next=")
    page.fill("#token", "lw_wrong")
    page.click("form button[type=submit]")
    assert "unknown, expired or revoked" in page.inner_text("main")

    page.fill("#token", suite_token)
    page.click("form button[type=submit]")
    page.wait_for_url(f"{live_server}/?tag=nothing-has-it")  # back where the user was going
    page.wait_for_function(
        "() => document.querySelector('#page-info').textContent === 'no runs match'"
    )
    cookie = next(c for c in page.context.cookies() if c["name"] == "layerwatch_token")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert suite_token not in page.content()
    assert page.evaluate("() => document.cookie").find("lw_") == -1  # scripts cannot read it
    # the cookie reads, but never writes: a forged form post has nothing to ride on
    jar = {"layerwatch_token": suite_token}
    assert httpx.get(f"{live_server}/api/v1/runs", cookies=jar).status_code == 200
    refused = httpx.post(f"{live_server}/api/v1/runs", cookies=jar, json={"project": "x"})
    assert refused.status_code == 401

    page.click(".logout button")
    page.wait_for_url(re.compile(r".*/login$"))
    page.goto(f"{live_server}/")
    assert "/login" in page.url
