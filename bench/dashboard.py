"""Time to first chart on the dashboard's run page: the demo run against a run of
100 layers x 10,000 steps, in the same run of this script.

A real server on a fresh SQLite file serves both runs: the demo's digits MLP,
trained with the real client, and a synthetic run whose batches carry the
statistics of 100 activation tensors at 10,000 steps (one million rows) and a
loss at every step. Headless Chromium (the system's `chromium`) opens each run
page several times; the page marks `lw:first-chart` when its first scalar chart
has drawn and `lw:layers` when the layer table is filled, and the figures are
those marks' times from navigation start (the browser's performance timing),
medians over the loads. The big run's ratio to the demo run says whether a
long run opens as fast as a short one (the pages ask for about one point per
pixel).

    python bench/dashboard.py            # 7 loads per run
    python bench/dashboard.py --loads 3  # quicker

It reports and exits 0. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

import httpx

from layerwatch import wire
from layerwatch_server.cli.demo import train
from layerwatch_server.cli.serving import serve_in_thread
from layerwatch_server.config import Settings
from layerwatch_server.main import create_app
from report import machine, markdown

LAYERS = 100
STEPS = 10_000
STEPS_PER_BATCH = 200


def _big_run(http: httpx.Client) -> str:
    """Post a run of LAYERS activations x STEPS steps, and a loss at every step."""
    run_id = uuid.uuid4().hex
    http.post("/api/v1/runs", json={"id": run_id, "project": "bench", "name": "100x10k"})
    for first in range(0, STEPS, STEPS_PER_BATCH):
        steps = list(range(first, first + STEPS_PER_BATCH))
        stats = [
            {"name": f"layers.{i}", "kind": "activation", "steps": steps,
             **{stat: [0.001 * s + i for s in steps] for stat in wire.STAT_NAMES
                if stat not in ("nonfinite", "numel")},
             "nonfinite": [0] * len(steps), "numel": [4096] * len(steps)}
            for i in range(LAYERS)
        ]  # fmt: skip
        batch = wire.Batch.model_validate({
            "batch_id": uuid.uuid4().hex, "rank": 0, "stats": stats,
            "scalars": [{"name": "loss", "steps": steps, "values": [1 / (1 + s) for s in steps]}],
        })  # fmt: skip
        answer = http.post(
            f"/api/v1/runs/{run_id}/batches",
            content=batch.model_dump_json().encode(),
            headers={"Content-Type": "application/json"},
        )
        answer.raise_for_status()
    http.patch(f"/api/v1/runs/{run_id}", json={"status": "finished"}).raise_for_status()
    return run_id


def _loads(browser, url: str, loads: int) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    first_chart, layers = [], []
    for _ in range(loads):
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.goto(url)
        page.wait_for_function(
            "() => performance.getEntriesByName('lw:first-chart').length"
            " && performance.getEntriesByName('lw:layers').length",
            timeout=120_000,
        )
        marks = page.evaluate(
            "() => ['lw:first-chart', 'lw:layers'].map("
            "(name) => performance.getEntriesByName(name)[0].startTime)"
        )
        first_chart.append(marks[0])
        layers.append(marks[1])
        context.close()
    return first_chart, layers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=7, help="page loads per run")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    executable = os.environ.get("LAYERWATCH_CHROMIUM") or shutil.which("chromium")
    if executable is None:
        print("no chromium on this machine (apt-get install chromium)", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), allow_open=True)
        with serve_in_thread(create_app(settings)) as server:
            demo = train(server, epochs=8)
            with httpx.Client(base_url=server, timeout=120) as http:
                big = _big_run(http)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=executable,
                    args=["--headless=new", "--no-sandbox", "--disable-gpu",
                          "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", "--no-first-run"],
                )  # fmt: skip
                _loads(browser, f"{server}/runs/{demo}", 1)  # warm the server's caches
                results = {
                    "demo (digits MLP, 7 tensors x 3 kinds, ~190 steps)": _loads(
                        browser, f"{server}/runs/{demo}", args.loads
                    ),
                    f"{LAYERS} layers x {STEPS:,} steps": _loads(
                        browser, f"{server}/runs/{big}", args.loads
                    ),
                }
                browser.close()
    print(machine())
    print(f"median of {args.loads} loads, ms from navigation start\n")
    rows = [["run page", "first chart (ms)", "layer table (ms)"]]
    medians = []
    for name, (first_chart, layers) in results.items():
        medians.append((statistics.median(first_chart), statistics.median(layers)))
        rows.append([name, f"{medians[-1][0]:.0f}", f"{medians[-1][1]:.0f}"])
    rows.append([
        "ratio, big / demo", f"{medians[1][0] / medians[0][0]:.2f}",
        f"{medians[1][1] / medians[0][1]:.2f}",
    ])  # fmt: skip
    print(markdown(rows, right=lambda i: i > 0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
