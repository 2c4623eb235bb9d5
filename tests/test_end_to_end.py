"""A real training loop streaming to a real server over HTTP, then queried and plotted."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from sklearn.datasets import load_digits, load_iris  # noqa: E402
from torch import nn  # noqa: E402

import layerwatch  # noqa: E402
from auth_headers import auth_headers  # noqa: E402
from layerwatch import wire  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


PROBE = 60


def _train(
    server: str, *, steps_per_epoch: int, epochs: int, every: int
) -> tuple[str, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x, y = load_iris(return_X_y=True)
    x = torch.tensor((x - x.mean(0)) / x.std(0), dtype=torch.float32)
    y = torch.tensor(y)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = len(x) // steps_per_epoch
    with layerwatch.Run(server, project="e2e", name="iris", config={"lr": 0.1}) as run:
        run.watch(
            model,
            optimizer=optimizer,
            every=every,
            probe=layerwatch.Probe(x[:PROBE], y[:PROBE], attributions=4),
        )
        for _ in range(epochs):
            for i in range(steps_per_epoch):
                xb, yb = x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]
                loss = nn.functional.cross_entropy(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                run.log({"loss": loss.detach()})
                optimizer.step()
            run.probe()  # the held-out view, at each epoch's end
        run_id = run.id
        assert run.counters.dropped == 0
    with torch.no_grad():
        final_outputs = model(x[:PROBE])
    return run_id, y[:PROBE], final_outputs


def test_training_run_is_stored_queried_and_plotted(live_server: str) -> None:
    run_id, labels, outputs = _train(live_server, steps_per_epoch=5, epochs=4, every=3)
    total_steps = 20
    captured = [k for k in range(total_steps) if k % 3 == 0]
    base = f"{live_server}/api/v1/runs/{run_id}"
    with httpx.Client(headers=auth_headers(), timeout=30) as http:
        run = http.get(base).raise_for_status().json()
        assert run["status"] == "finished"
        assert run["config"] == {"lr": 0.1}

        tensors = http.get(f"{base}/tensors").raise_for_status().json()["data"]
        names = [t["name"] for t in tensors if t["kind"] == "activation"]
        assert names == ["0", "1", "2"]  # leaf modules in network order
        assert {t["module_type"] for t in tensors} == {"Linear", "ReLU"}

        for name in names:
            series = (
                http.get(f"{base}/series", params={"tensor": name, "stat": "numel"})
                .raise_for_status()
                .json()
            )
            assert series["steps"] == captured
            width = 3 if name == "2" else 16
            assert all(v == 30 * width for v in series["values"])

        relu = (
            http.get(f"{base}/series", params={"tensor": "1", "stat": "min"})
            .raise_for_status()
            .json()
        )
        assert all(v >= 0 for v in relu["values"])  # a ReLU's output is never negative

        loss = http.get(f"{base}/scalars/series", params={"name": "loss"}).raise_for_status().json()
        assert loss["steps"] == list(range(total_steps))
        assert all(math.isfinite(v) for v in loss["values"])
        assert loss["values"][-1] < loss["values"][0]

        changes = http.get(f"{base}/weight-changes", params={"tensor": "0.weight"}).json()
        assert changes["steps"] == captured
        assert all(0 < v < 1 for v in changes["since_prev"][1:])
        means = http.get(f"{base}/unit-means", params={"tensor": "1"}).json()
        assert (means["steps"], means["units"]) == (captured, 16)
        assert all(v >= 0 for row in means["values"] for v in row)  # ReLU units
        [tree] = http.get(f"{base}/model").json()["data"]
        assert [(m["path"], m["type"]) for m in tree["modules"]] == [
            ("", "Sequential"), ("0", "Linear"), ("1", "ReLU"), ("2", "Linear"),
        ]  # fmt: skip
        assert tree["params"] == 4 * 16 + 16 + 16 * 3 + 3

        probes = http.get(f"{base}/probes").json()["data"]
        assert [p["step"] for p in probes] == [5, 10, 15, 20]  # steps taken by each epoch end
        assert [x["name"] for x in probes[-1]["layers"]] == names
        last = wire.Probe.model_validate(http.get(f"{base}/probes/20").json())
        assert np.frombuffer(last.labels or b"", "<i4").tolist() == labels.tolist()
        out = last.layers[-1]
        got = np.frombuffer(out.features, "<f2").reshape(out.features_shape)
        np.testing.assert_allclose(got, outputs.numpy(), rtol=1e-2, atol=1e-2)  # float16
        predictions = np.frombuffer(last.predictions or b"", "<i4")
        assert predictions.tolist() == outputs.argmax(1).tolist()
        assert last.attributions is not None  # integrated gradients of 4 samples
        assert (last.attributions.shape, probes[-1]["attributions"]) == ([4, 4], [4, 4])
        shares = np.frombuffer(last.attributions.values, "<f4").reshape(4, 4)
        assert np.isfinite(shares).all()
        assert np.abs(shares).sum() > 0

        png = http.get(
            f"{base}/plots/series.png", params={"tensor": names, "stat": "std"}
        ).raise_for_status()
        assert png.headers["content-type"] == "image/png"
        assert png.content.startswith(PNG_SIGNATURE)


@pytest.mark.slow
def test_demo_command_trains_and_writes_plots(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "layerwatch_server.cli", "demo", "--out", str(out), "--epochs", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "layerwatch server: http://127.0.0.1:" in result.stdout
    assert " sent, 0 spooled, 0 dropped" in result.stdout  # probes included
    assert "finished: " in result.stderr  # the run's own summary line, logging unconfigured
    assert " records sent, 0 spooled, 0 dropped (0 batches given up)" in result.stderr
    plots = sorted((out / "plots").glob("*.png"))
    names = {plot.stem for plot in plots}
    assert {"loss", "gradient_flow", "weights_before_after", "scatter_by_epoch", "tsne",
            "class_means", "confusion", "attributions", "model"} <= names  # fmt: skip
    for plot in plots:
        data = plot.read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert len(data) > 10_000  # real curves, not an empty frame
    assert (out / "data" / "layerwatch.db").exists()
    assert "\nfindings (http://127.0.0.1:" in result.stdout  # the diagnosis, printed at the end


@pytest.mark.slow
def test_demo_broken_prints_what_the_diagnosis_finds(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "layerwatch_server.cli", "demo", "--broken", "--epochs", "2",
         "--out", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("\nfindings (", 1)[1].splitlines()[1:]
    rows = {tuple(line.split()[:3]) for line in table if not line.startswith("done in")}
    # fc1 was left out of the optimizer; the rest's learning rate killed ReLU units
    assert ("warning", "not_updating", "fc1.weight") in rows
    assert any(kind == "dead_units" for _, kind, _ in rows)


@pytest.mark.slow
def test_demo_serve_prints_the_dashboard_while_the_run_trains(tmp_path: Path) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "layerwatch_server.cli", "demo", "--serve", "--epochs", "3",
         "--out", str(tmp_path / "demo")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        line = ""
        for line in demo.stdout:  # the first line naming the dashboard
            if line.startswith("dashboard: "):
                break
        url = line.split()[1]
        assert url.startswith("http://127.0.0.1:")
        assert "/runs/" in url
        page = httpx.get(url, timeout=30)  # the demo's server is open on loopback
        assert page.status_code == 200
        assert 'data-page="run"' in page.text
        base, run_id = url.split("/runs/")
        run = httpx.get(f"{base}/api/v1/runs/{run_id}", timeout=30).json()
        assert run["status"] == "running"  # trained slowly: there is something to watch
        for line in demo.stdout:  # training ends, and the server keeps serving
            if "serving until Ctrl-C" in line:
                break
        assert httpx.get(f"{base}/api/v1/runs/{run_id}", timeout=30).json()["status"] == "finished"
    finally:
        demo.kill()
        demo.communicate(timeout=30)  # reaps it and closes its pipe


def test_a_nan_between_captures_is_found_at_its_step_and_layer(live_server: str) -> None:
    """The sentinel: a NaN made by one layer at one uncaptured step is reported with
    that step and layer, though by the next capture every tensor is NaN."""
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    model = nn.Sequential(
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    poisoned_at, step = 23, 0

    def poison(module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor | None:
        return output * math.nan if step == poisoned_at else None

    model[2].register_forward_hook(poison)  # before the watch: layerwatch sees its output
    with layerwatch.Run(live_server, project="e2e", name="digits-nan") as run:
        run.watch(model, optimizer, every=10)
        for step in range(40):
            xb, yb = x[step * 32 : (step + 1) * 32], y[step * 32 : (step + 1) * 32]
            loss = nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        run_id = run.id
    with httpx.Client(headers=auth_headers(), timeout=30) as http:
        base = f"{live_server}/api/v1/runs/{run_id}"
        events = http.get(f"{base}/nonfinite").raise_for_status().json()["data"]
        series = http.get(f"{base}/series", params={"tensor": "0", "stat": "nonfinite"})
        findings = http.get(f"{base}/findings").raise_for_status().json()["findings"]
    assert [(e["step"], e["tensor"], e["kind"]) for e in events] == [(23, "2", "activation")]
    assert events[0]["also"][:2] == ["3", "4"]  # downstream, in forward order, then grads
    assert {"0.weight", "4.bias"} <= set(events[0]["also"])
    # What captures alone show: the first layer clean at 20, NaN at 30 (weights poisoned).
    nonfinite = dict(zip(series.json()["steps"], series.json()["values"], strict=True))
    assert nonfinite[20] == 0
    assert nonfinite[30] > 0
    # The diagnosis names the true origin, from the sentinel, not the poisoned step 30.
    [origin] = [f for f in findings if f["kind"] == "nonfinite"][:1]
    assert (origin["step"], origin["tensor"], origin["tensor_kind"]) == (23, "2", "activation")
    assert origin["severity"] == "error"
    assert origin["evidence"]["from_sentinel"] is True


def test_captures_a_slow_reducer_skipped_are_stored_with_the_run(
    live_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole captures skipped (the reducer fell behind) are counted by the client and
    kept on the run, so a reader knows the stored steps are a subsample."""
    import threading
    import time

    from layerwatch.reduce.statistics import Summarizer

    summarize = Summarizer.summarize

    def slow(self: Summarizer, tensor: torch.Tensor, **kwargs: object):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "layerwatch-reducer":
            time.sleep(0.003)
        return summarize(self, tensor, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Summarizer, "summarize", slow)
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with layerwatch.Run(live_server, project="e2e", name="skipped", max_copy_bytes=1) as run:
        run.watch(model, optimizer, every=1)
        for step in range(30):
            loss = nn.functional.cross_entropy(model(x[step * 16 : (step + 1) * 16]),
                                               y[step * 16 : (step + 1) * 16])  # fmt: skip
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    skipped = run.counters.skipped_captures
    assert skipped > 0
    assert run.counters.dropped == 0
    with httpx.Client(headers=auth_headers(), timeout=30) as http:
        stored = http.get(f"{live_server}/api/v1/runs/{run.id}").raise_for_status().json()
        steps = (
            http.get(
                f"{live_server}/api/v1/runs/{run.id}/series", params={"tensor": "0", "stat": "mean"}
            )
            .raise_for_status()
            .json()["steps"]
        )
    assert stored["skipped_captures"] == skipped
    assert len(steps) == 31 - skipped or len(steps) == 30 - skipped  # step 30 ends the loop
