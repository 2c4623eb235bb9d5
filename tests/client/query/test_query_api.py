"""`layerwatch.Api` against a real server: runs trained on iris with the real client, then
queried back and compared with what training saw, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import socket
import sys
import uuid
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from torch import nn

import layerwatch
import layerwatch.query.api
from layerwatch.errors import DeliveryError, NotFoundError, RejectedError, RetryableError

EVERY = 2
EPOCHS = 4
BATCH = 30
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Trained:
    """What the training loop of the iris run saw, to compare the server's answers with."""

    project: str
    sgd: str  # run ids
    adam: str
    model: nn.Sequential
    x_probe: torch.Tensor
    y_probe: torch.Tensor
    w_init: np.ndarray
    losses: dict[int, float] = field(default_factory=dict)
    outputs: dict[int, np.ndarray] = field(default_factory=dict)  # layer "0", (batch, 16)
    weights: dict[int, np.ndarray] = field(default_factory=dict)  # "0.weight" before the step
    probe_steps: list[int] = field(default_factory=list)

    @property
    def captured(self) -> list[int]:
        return [step for step in sorted(self.losses) if step % EVERY == 0]


def _iris() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_iris()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    order = torch.randperm(150, generator=torch.Generator().manual_seed(0))
    return x[order], torch.tensor(data.target)[order]


@pytest.fixture(scope="module")
def trained(live_server: str) -> Trained:
    x, y = _iris()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    project = f"iris-{uuid.uuid4().hex[:8]}"
    result = Trained(project, "", "", model, x[120:], y[120:],
                     model[0].weight.detach().numpy().copy())  # fmt: skip
    current: list[torch.Tensor] = []
    model[0].register_forward_hook(lambda _m, _i, out: current.append(out.detach().clone()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    config = {"lr": 0.1, "optimizer": "sgd", "opt": {"momentum": 0.9}}
    with layerwatch.Run(live_server, project, "iris-sgd", config, tags=["iris", "sgd"]) as run:
        run.watch(
            model,
            optimizer,
            every=EVERY,
            probe=layerwatch.Probe(result.x_probe, result.y_probe, attributions=2),
        )
        step = 0
        for _epoch in range(EPOCHS):
            for i in range(0, 120, BATCH):
                loss = nn.functional.cross_entropy(model(x[i : i + BATCH]), y[i : i + BATCH])
                result.outputs[step] = current[-1].numpy()
                result.losses[step] = loss.item()
                run.log({"loss": loss.detach()})
                optimizer.zero_grad()
                loss.backward()
                result.weights[step] = model[0].weight.detach().numpy().copy()
                optimizer.step()
                step += 1
            run.probe()
            result.probe_steps.append(step)
        assert run.counters.dropped == 0
        result.sgd = run.id

    other = nn.Sequential(nn.Linear(4, 3))
    adam = torch.optim.Adam(other.parameters(), lr=0.01)
    config = {"lr": 0.01, "optimizer": "adam", "opt": {"betas": [0.9, 0.999]}}
    with layerwatch.Run(live_server, project, "iris-adam", config, tags=["iris"]) as run:
        run.watch(other, adam, every=1)
        for i in range(0, 120, BATCH):
            loss = nn.functional.cross_entropy(other(x[i : i + BATCH]), y[i : i + BATCH])
            run.log({"loss": loss.detach()})
            adam.zero_grad()
            loss.backward()
            adam.step()
        result.adam = run.id
    return result


@pytest.fixture
def api(live_server: str) -> layerwatch.Api:  # shadows the server tests' httpx client
    with layerwatch.Api(live_server, timeout=30.0) as client:
        yield client  # type: ignore[misc]


# -- runs ------------------------------------------------------------------------------


def test_runs_are_found_by_project_tag_name_and_config(
    api: layerwatch.Api, trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    def names(**filters: object) -> list[str]:
        return [run.name for run in api.runs(trained.project, **filters)]  # type: ignore[arg-type]

    assert names() == ["iris-adam", "iris-sgd"]  # newest first
    assert names(tag="sgd") == ["iris-sgd"]
    assert names(name="iris-adam") == ["iris-adam"]
    assert names(status="finished") == ["iris-adam", "iris-sgd"]
    assert names(config={"optimizer": "adam"}) == ["iris-adam"]
    assert names(config={"opt.momentum": 0.9, "lr": 0.1}) == ["iris-sgd"]
    assert names(config={"opt": {"betas": [0.9, 0.999]}}) == ["iris-adam"]
    assert names(config={"lr": "0.1"}) == []  # a string is not the number
    monkeypatch.setattr(layerwatch.query.api, "_RUNS_PAGE", 1)  # pages are followed
    assert names(tag="iris") == ["iris-adam", "iris-sgd"]

    run = api.run(trained.sgd)
    assert (run.id, run.name, run.project, run.status) == (
        trained.sgd, "iris-sgd", trained.project, "finished")  # fmt: skip
    assert run.config == {"lr": 0.1, "optimizer": "sgd", "opt": {"momentum": 0.9}}
    assert run.tags == ("iris", "sgd")
    assert run.started_at.tzinfo is not None
    assert run.finished_at is not None
    assert run.finished_at >= run.started_at
    assert run.api is api
    [project] = [p for p in api.projects() if p.name == trained.project]
    assert project.runs == 2


def test_tensors_and_model_tree(api: layerwatch.Api, trained: Trained) -> None:
    run = api.run(trained.sgd)
    activations = run.tensors("activation")
    assert [(t.name, t.kind) for t in activations] == [("0", "activation"), ("1", "activation"),
                                                       ("2", "activation")]  # fmt: skip
    assert activations[0].module_type == "Linear"
    assert {t.name for t in run.tensors("weight")} == {"0.weight", "0.bias", "2.weight", "2.bias"}
    [tree] = run.model()["data"]  # type: ignore[misc]
    assert [(m["path"], m["type"]) for m in tree["modules"]] == [  # type: ignore[index]
        ("", "Sequential"), ("0", "Linear"), ("1", "ReLU"), ("2", "Linear")]  # fmt: skip
    assert tree["params"] == sum(p.numel() for p in trained.model.parameters())  # type: ignore[index]


# -- measurements ----------------------------------------------------------------------


def test_series_are_what_training_computed(api: layerwatch.Api, trained: Trained) -> None:
    run = api.run(trained.sgd)
    steps = trained.captured
    mean = run.series("0")
    assert mean.steps.dtype == np.int64
    assert mean.values.dtype == np.float64
    assert not mean.downsampled
    np.testing.assert_array_equal(mean.steps, steps)
    np.testing.assert_allclose(mean.values, [trained.outputs[s].mean() for s in steps], rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    top = run.series("0", stat="max", start=4, end=10)
    np.testing.assert_array_equal(top.steps, [4, 6, 8, 10])
    np.testing.assert_allclose(top.values, [trained.outputs[s].max() for s in (4, 6, 8, 10)])
    std = run.series("0.weight", "std", kind="weight")
    np.testing.assert_allclose(std.values, [trained.weights[s].std() for s in steps],
                               rtol=1e-4)  # fmt: skip
    thin = run.series("0", max_points=4)
    assert thin.downsampled
    assert len(thin) == 4
    assert (thin.steps[0], thin.steps[-1]) == (0, steps[-1])

    loss = run.scalars("loss")
    np.testing.assert_array_equal(loss.steps, sorted(trained.losses))
    np.testing.assert_allclose(loss.values, [trained.losses[s] for s in loss.steps], rtol=1e-6)
    assert run.scalar_names() == ["loss"]


def test_unit_means_weight_changes_and_histograms(api: layerwatch.Api, trained: Trained) -> None:
    run = api.run(trained.sgd)
    steps = trained.captured
    unit_steps, means = run.unit_means("0")
    np.testing.assert_array_equal(unit_steps, steps)
    assert means.shape == (len(steps), 16)
    np.testing.assert_allclose(means, [trained.outputs[s].mean(0) for s in steps], rtol=1e-5,
                               atol=1e-6)  # fmt: skip

    changes = run.weight_changes("0.weight")
    assert set(changes) == {"steps", "since_prev", "since_init", "update_ratio"}
    np.testing.assert_array_equal(changes["steps"], steps)
    norm = np.linalg.norm
    since_init = [norm(trained.weights[s] - trained.w_init) / norm(trained.w_init) for s in steps]
    np.testing.assert_allclose(changes["since_init"], since_init, rtol=1e-4, atol=1e-7)
    assert np.isnan(changes["since_prev"][0])  # nothing before the first capture

    [hist] = run.histograms("0", step=6)
    out = trained.outputs[6]
    assert hist.step == 6
    assert hist.sample_size is None
    assert hist.counts.sum() == out.size
    assert len(hist.edges) == len(hist.counts) + 1
    np.testing.assert_allclose(hist.edges[[0, -1]], [out.min(), out.max()], rtol=1e-6)
    expected, _ = np.histogram(out, bins=hist.edges)
    assert np.abs(hist.counts - expected).sum() <= 2  # float32 ties at bin edges
    assert [h.step for h in run.histograms("0.weight", kind="weight", start=10)] == [10, 12, 14]


def test_probe_arrays(api: layerwatch.Api, trained: Trained) -> None:
    run = api.run(trained.sgd)
    assert run.probe_steps() == trained.probe_steps
    probe = run.probe()  # the latest, after the last epoch: the trained model's view
    assert probe.step == trained.probe_steps[-1]
    assert list(probe.features) == ["0", "1", "2"]
    with torch.no_grad():
        logits = trained.model(trained.x_probe).numpy()
    assert probe.features["2"].dtype == np.float32
    np.testing.assert_allclose(probe.features["2"], logits, rtol=2e-3, atol=2e-3)  # float16
    np.testing.assert_array_equal(probe.labels, trained.y_probe.numpy())  # type: ignore[arg-type]
    np.testing.assert_array_equal(probe.predictions, logits.argmax(1))  # type: ignore[arg-type]
    assert probe.attributions is not None
    assert probe.attributions.shape == (2, 4)
    np.testing.assert_array_equal(probe.attribution_targets, trained.y_probe[:2].numpy())  # type: ignore[arg-type]

    first = run.probe(layer="1", step=trained.probe_steps[0])
    assert (first.step, list(first.features)) == (trained.probe_steps[0], ["1"])
    assert (first.features["1"] >= 0).all()  # a ReLU
    with pytest.raises(NotFoundError):
        run.probe(step=3)
    assert api.run(trained.adam).probe_steps() == []
    with pytest.raises(NotFoundError, match="no probe"):
        api.run(trained.adam).probe()


def test_pandas(api: layerwatch.Api, trained: Trained, monkeypatch: pytest.MonkeyPatch) -> None:
    loss = api.run(trained.sgd).scalars("loss")
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(ImportError, match="pip install pandas"):
        loss.to_pandas()
    monkeypatch.undo()
    pd = pytest.importorskip("pandas")
    series = loss.to_pandas()
    assert isinstance(series, pd.Series)
    assert series.index.name == "step"
    np.testing.assert_array_equal(series.to_numpy(), loss.values)


# -- plots and files -------------------------------------------------------------------


def test_plot_and_view_data(api: layerwatch.Api, trained: Trained, tmp_path) -> None:
    run, other = api.run(trained.sgd), api.run(trained.adam)
    path = tmp_path / "series.png"
    png = run.plot("series", path=path, tensor=["0", "2"], stat="std", width=400, height=300)
    assert png.startswith(PNG)
    assert path.read_bytes() == png
    data = run.view_data("series", tensor=["0", "2"], stat="std", logy=False)
    assert [line["label"] for line in data["lines"]] == ["0", "2"]  # type: ignore[index, union-attr]
    np.testing.assert_allclose(data["lines"][0]["values"], run.series("0", "std").values)  # type: ignore[index, call-overload]
    both = run.view_data("scalars", name="loss", compare=[other])  # a RunRef is its id
    assert [line["run_id"] for line in both["lines"]] == [run.id, other.id]  # type: ignore[index, union-attr]
    assert run.plot("scalars", name="loss", compare=other).startswith(PNG)
    with pytest.raises(RejectedError, match="width") as refused:
        run.plot("series", width=10)
    assert refused.value.status_code == 422
    with pytest.raises(NotFoundError):
        run.plot("no-such-view")


def test_export_files(api: layerwatch.Api, trained: Trained, tmp_path) -> None:
    run = api.run(trained.sgd)
    written = run.export(tmp_path / "stats.csv", tensor="0")
    rows = list(csv.DictReader(io.StringIO(written.read_text())))
    np.testing.assert_array_equal([int(r["step"]) for r in rows], trained.captured)
    np.testing.assert_array_equal([float(r["mean"]) for r in rows], run.series("0").values)
    scalars = run.export(tmp_path / "loss.csv", table="scalars")
    assert len(scalars.read_text().splitlines()) == 1 + len(trained.losses)
    npz = run.export(tmp_path / "run.npz", format="npz", kind="weight", start=4)
    with np.load(npz) as arrays:
        np.testing.assert_array_equal(arrays["stats/weight/0.weight/steps"], trained.captured[2:])
        changes = run.weight_changes("0.weight", start=4)
        np.testing.assert_array_equal(
            arrays["weight_changes/0.weight/since_init"], changes["since_init"]
        )
    with pytest.raises(NotFoundError):
        run.export(tmp_path / "nope.csv", tensor="nope")
    with pytest.raises(layerwatch.ConfigError):
        run.export(tmp_path / "x.npz", table="stats", format="npz")


# -- errors ----------------------------------------------------------------------------


def test_errors(api: layerwatch.Api, trained: Trained) -> None:
    with pytest.raises(layerwatch.RunNotFoundError) as missing:
        api.run("nope")
    assert isinstance(missing.value, NotFoundError)
    assert missing.value.status_code == 404
    run = api.run(trained.sgd)
    with pytest.raises(NotFoundError) as no_tensor:
        run.series("nope")
    assert not isinstance(no_tensor.value, layerwatch.RunNotFoundError)
    assert "nope" in str(no_tensor.value)
    with pytest.raises(RejectedError, match="max_points") as refused:
        run.series("0", max_points=1)
    assert isinstance(refused.value.detail, list)  # the server's validation errors


def test_unreachable_server_is_a_delivery_error() -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        layerwatch.Api(f"http://127.0.0.1:{port}", timeout=5) as api,
        pytest.raises(RetryableError) as failed,
    ):
        api.runs()
    assert isinstance(failed.value, DeliveryError)
    assert isinstance(failed.value.__cause__, httpx.ConnectError)


def test_api_is_exported_lazily() -> None:
    assert "Api" in dir(layerwatch)
    assert layerwatch.Api is layerwatch.query.api.Api
    with pytest.raises(AttributeError):
        layerwatch.Nope  # type: ignore[attr-defined]  # noqa: B018
