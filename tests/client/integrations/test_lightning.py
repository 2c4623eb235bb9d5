"""The Lightning callback against a live server: a tiny classifier of scikit-learn's
digits, with automatic and manual optimization and gradient accumulation."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

pl = pytest.importorskip("lightning.pytorch")
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from layerwatch.integrations.lightning import LayerwatchCallback  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    # Lightning's own advice on a CPU box and tiny loaders; nothing the callback does.
    "ignore::UserWarning:lightning",
    "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning",
    "ignore:.*LeafSpec.*:FutureWarning",
)


def _loader(batch_size: int = 16, batches: int = 12) -> DataLoader[tuple[torch.Tensor, ...]]:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[: batch_size * batches] / 16.0, dtype=torch.float32)
    return DataLoader(TensorDataset(x, torch.tensor(y[: batch_size * batches])), batch_size)


class Classifier(pl.LightningModule):  # type: ignore[misc]
    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
        self.fail_at = fail_at
        self.steps_seen: list[int] = []  # global step at each training_step
        self.grad_norms: dict[int, float] = {}  # global step -> L2 norm of net.0.weight.grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # what a probe calls
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        if batch_idx == self.fail_at:
            raise RuntimeError("boom")
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.steps_seen.append(self.trainer.global_step)
        self.log("loss", loss)
        self.log("seen", float(self.trainer.global_step))  # its value is its step
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grad = self.net[0].weight.grad
        if grad is not None:
            self.grad_norms[self.trainer.global_step] = float(grad.norm())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class ManualClassifier(Classifier):
    """Manual optimization, stepping every second batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        optimizer = self.optimizers()
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.manual_backward(loss / 2)
        if batch_idx % 2 == 1:
            self.log("seen", float(self.trainer.global_step))
            optimizer.step()
            optimizer.zero_grad()
        return loss


class TwoOptimizers(Classifier):
    """Manual optimization with an optimizer per layer: two global steps per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        first, second = self.optimizers()
        loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        self.manual_backward(loss)
        self.log("seen", float(self.trainer.global_step))
        for optimizer in (first, second):
            optimizer.step()
            optimizer.zero_grad()
        return loss

    def configure_optimizers(self) -> Any:
        return [
            torch.optim.SGD(self.net[0].parameters(), lr=0.1),
            torch.optim.SGD(self.net[2].parameters(), lr=0.1),
        ]


def _trainer(callback: LayerwatchCallback, **kwargs: Any) -> Any:
    kwargs.setdefault("devices", 1)
    return pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback], **kwargs,
    )  # fmt: skip


def _callback(live_server: str, **kwargs: Any) -> LayerwatchCallback:
    return LayerwatchCallback(live_server, project="lightning-" + uuid.uuid4().hex[:8], **kwargs)


def _scalar(api: httpx.Client, run_id: str, name: str) -> dict[int, float]:
    series = api.get(f"/runs/{run_id}/scalars/series", params={"name": name}).raise_for_status()
    return dict(zip(series.json()["steps"], series.json()["values"], strict=True))


def _stat_steps(api: httpx.Client, run_id: str, tensor: str, kind: str) -> list[int]:
    params = {"tensor": tensor, "kind": kind, "stat": "mean"}
    response = api.get(f"/runs/{run_id}/series", params=params).raise_for_status()
    return list(response.json()["steps"])


def test_automatic_optimization_with_accumulation(live_server: str, api: httpx.Client) -> None:
    callback = _callback(live_server, every=2, config={"lr": 0.1})
    model = Classifier()
    trainer = _trainer(callback, max_steps=5, accumulate_grad_batches=2, limit_val_batches=1)
    trainer.fit(model, _loader(), _loader(batches=1))
    assert callback.run is not None
    run_id = callback.run.id
    assert trainer.global_step == 5
    assert callback.run.current_step == trainer.global_step

    run = api.get(f"/runs/{run_id}").raise_for_status().json()
    assert run["status"] == "finished"
    assert run["config"] == {"lr": 0.1}
    names = {t["name"] for t in api.get(f"/runs/{run_id}/tensors").json()["data"]}
    assert {"net.0", "net.2", "net.0.weight"} <= names
    # Steps 0..4 are the 5 updates; every=2 captures 0, 2, 4.
    for tensor in ("net.0", "net.2"):
        assert _stat_steps(api, run_id, tensor, "activation") == [0, 2, 4]
    assert _stat_steps(api, run_id, "net.0.weight", "weight") == [0, 2, 4]

    # Two batches per update; the second one's value is sent, at the update's step.
    seen = _scalar(api, run_id, "seen")
    assert seen == {k: float(k) for k in range(5)}
    assert model.steps_seen == [k // 2 for k in range(10)]
    assert sorted(_scalar(api, run_id, "loss")) == list(range(5))
    # Validation at the end of the 12-batch epoch, after 6 updates would be past
    # max_steps: the fit ends at 5 updates without an epoch end, so no val_loss.
    assert "val_loss" not in api.get(f"/runs/{run_id}/scalars").json()["data"]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_gradients_are_those_the_update_applies(
    live_server: str, api: httpx.Client, accumulate: int
) -> None:
    callback = _callback(live_server, every=1)
    model = Classifier()
    trainer = _trainer(callback, max_steps=3, accumulate_grad_batches=accumulate)
    trainer.fit(model, _loader())
    assert callback.run is not None
    params = {"tensor": "net.0.weight", "kind": "grad", "stat": "l2"}
    response = api.get(f"/runs/{callback.run.id}/series", params=params).raise_for_status()
    stored = dict(zip(response.json()["steps"], response.json()["values"], strict=True))
    assert stored.keys() == model.grad_norms.keys() == {0, 1, 2}
    for step, norm in model.grad_norms.items():
        assert stored[step] == pytest.approx(norm, rel=1e-4), step


def test_validation_metrics_at_the_global_step(live_server: str, api: httpx.Client) -> None:
    callback = _callback(live_server, every=1)
    trainer = _trainer(callback, max_epochs=2, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(Classifier(), _loader(), _loader(batches=1))
    assert callback.run is not None
    run_id = callback.run.id
    # Validation after each 3-batch epoch: the model has had 3, then 6 updates.
    assert set(_scalar(api, run_id, "val_loss")) == {3, 6}
    assert _scalar(api, run_id, "seen") == {k: float(k) for k in range(6)}
    assert api.get(f"/runs/{run_id}").json()["status"] == "finished"


def test_probe_at_each_epoch_end(live_server: str, api: httpx.Client) -> None:
    x, y = next(iter(_loader(batch_size=32, batches=1)))
    callback = _callback(live_server, every=10, probe=(x, y))
    trainer = _trainer(callback, max_epochs=2, limit_train_batches=3)
    trainer.fit(Classifier(), _loader())
    assert callback.run is not None
    probes = api.get(f"/runs/{callback.run.id}/probes").raise_for_status().json()["data"]
    assert [p["step"] for p in probes] == [3, 6]


def test_a_resumed_fit_goes_on_at_its_global_step(
    live_server: str, api: httpx.Client, tmp_path: Path
) -> None:
    run_id = "lightning-resume-" + uuid.uuid4().hex[:8]
    first = _trainer(
        LayerwatchCallback(live_server, project="resume", id=run_id, every=1), max_steps=2
    )
    first.fit(Classifier(), _loader())
    first.save_checkpoint(tmp_path / "two.ckpt")
    callback = LayerwatchCallback(live_server, project="resume", id=run_id, every=1)
    second = _trainer(callback, max_steps=4)
    second.fit(Classifier(), _loader(), ckpt_path=tmp_path / "two.ckpt")
    assert callback.run is not None
    assert callback.run.current_step == second.global_step == 4
    assert _stat_steps(api, run_id, "net.0", "activation") == [0, 1, 2, 3]
    assert _scalar(api, run_id, "seen") == {k: float(k) for k in range(4)}
    assert api.get(f"/runs/{run_id}").json()["status"] == "finished"


def test_manual_optimization(live_server: str, api: httpx.Client) -> None:
    callback = _callback(live_server, every=1)
    trainer = _trainer(callback, max_steps=3)
    trainer.fit(ManualClassifier(), _loader())
    assert callback.run is not None
    run_id = callback.run.id
    assert trainer.global_step == 3
    assert _stat_steps(api, run_id, "net.0", "activation") == [0, 1, 2]
    assert _stat_steps(api, run_id, "net.2.weight", "grad") == [0, 1, 2]
    assert _scalar(api, run_id, "seen") == {0: 0.0, 1: 1.0, 2: 2.0}
    assert api.get(f"/runs/{run_id}").json()["status"] == "finished"


def test_two_optimizers_count_two_steps_a_batch(live_server: str, api: httpx.Client) -> None:
    callback = _callback(live_server, every=1)
    trainer = _trainer(callback, max_steps=6)
    trainer.fit(TwoOptimizers(), _loader())
    assert callback.run is not None
    run_id = callback.run.id
    assert trainer.global_step == 6
    assert callback.run.current_step == 6
    # Each batch's forward pass belongs to the first of its two steps.
    assert _stat_steps(api, run_id, "net.0", "activation") == [0, 2, 4]
    # Without an optimizer to follow, weights are read as the run catches up.
    assert _stat_steps(api, run_id, "net.0.weight", "weight") == list(range(6))
    assert _scalar(api, run_id, "seen") == {0: 0.0, 2: 2.0, 4: 4.0}
    assert api.get(f"/runs/{run_id}").json()["status"] == "finished"


def test_a_raising_training_step_fails_the_run(live_server: str, api: httpx.Client) -> None:
    callback = _callback(live_server, every=1)
    trainer = _trainer(callback, max_steps=10)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Classifier(fail_at=3), _loader())
    assert callback.run is not None
    assert callback.run.closed
    run_id = callback.run.id
    assert api.get(f"/runs/{run_id}").json()["status"] == "failed"
    assert _stat_steps(api, run_id, "net.0", "activation") == [0, 1, 2]


@pytest.mark.slow
def test_two_processes_write_one_run(backend: str, live_server: str, api: httpx.Client) -> None:
    if backend != "sqlite":
        pytest.skip("two spawned processes take ~15 s; what they store is checked on SQLite")
    run_id = "lightning-ddp-" + uuid.uuid4().hex[:8]
    callback = _callback(live_server, every=1, id=run_id)
    trainer = _trainer(
        callback, max_steps=3, devices=2, strategy="ddp_spawn", accumulate_grad_batches=2
    )
    trainer.fit(Classifier(), _loader())
    assert callback.run is None  # the fit ran in the spawned processes
    assert api.get(f"/runs/{run_id}").json()["status"] == "finished"
    for rank in (0, 1):
        params = {"tensor": "net.0", "kind": "activation", "stat": "mean", "rank": rank}
        series = api.get(f"/runs/{run_id}/series", params=params).raise_for_status().json()
        assert series["steps"] == [0, 1, 2], rank
        seen = api.get(f"/runs/{run_id}/scalars/series", params={"name": "seen", "rank": rank})
        assert seen.json()["steps"] == [0, 1, 2], rank
