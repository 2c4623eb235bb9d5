"""``layerwatch demo``: a real training run streaming to a real local server.

It serves the embedded SQLite default on a free port, trains a small MLP on
scikit-learn's bundled handwritten digits (no download), logs loss and
accuracy, watches every layer, then fetches plots from the server's own
plot endpoints into the output folder.
"""

from __future__ import annotations

import importlib.util
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from layerwatch_server.auth.hosts import LOOPBACK_HOSTS
from layerwatch_server.cli.serving import serve_in_thread
from layerwatch_server.config import Settings
from layerwatch_server.main import create_app

PROJECT = "demo"


def _digits(seed: int) -> tuple[Any, Any, Any, Any]:
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )
    return (
        torch.from_numpy(x_train),
        torch.from_numpy(y_train),
        torch.from_numpy(x_test),
        torch.from_numpy(y_test),
    )


def train(
    server: str,
    *,
    epochs: int,
    seed: int = 0,
    every: int = 5,
    pace: float = 0.0,
    on_start: Callable[[str], None] | None = None,
    broken: bool = False,
) -> str:
    """Train the digits MLP with layerwatch attached; return the run id.

    ``pace`` seconds of sleep per batch make a run slow enough to watch live;
    ``on_start`` hears the run id before the first step; ``broken`` trains it the wrong
    way on purpose (`BROKEN`)."""
    import torch
    from torch import nn

    import layerwatch

    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = _digits(seed)
    model = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(64, 128), relu1=nn.ReLU(),
            fc2=nn.Linear(128, 64), relu2=nn.ReLU(),
            fc3=nn.Linear(64, 32), relu3=nn.ReLU(),
            out=nn.Linear(32, 10),
        )
    )  # fmt: skip
    lr, name = (BROKEN_LR, "digits-mlp-broken") if broken else (1e-3, "digits-mlp")
    # broken: fc1 is left out of the optimizer, the rest gets a learning rate far too high
    params = [p for n, p in model.named_parameters() if not (broken and n.startswith("fc1."))]
    optimizer = torch.optim.Adam(params, lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    config = {"model": "mlp-64-128-64-32-10", "lr": lr, "batch_size": 64, "epochs": epochs,
              "broken": broken}  # fmt: skip

    with layerwatch.Run(server, project=PROJECT, name=name, config=config) as run:
        # the held-out probe: what each layer makes of 256 test digits, once per epoch
        # and integrated gradients of 8 of them, when Captum is installed
        explain = 8 if importlib.util.find_spec("captum") else 0
        probe = layerwatch.Probe(x_test[:256], y_test[:256], attributions=explain)
        run.watch(model, optimizer=optimizer, every=every, probe=probe)
        if on_start is not None:
            on_start(run.id)
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(x_train))
            for start in range(0, len(order), 64):
                index = order[start : start + 64]
                logits = model(x_train[index])
                loss = loss_fn(logits, y_train[index])
                optimizer.zero_grad()
                loss.backward()
                acc = (logits.argmax(1) == y_train[index]).float().mean()
                run.log({"loss": loss.detach(), "train_acc": acc})
                optimizer.step()
                if pace:
                    time.sleep(pace)
            model.eval()
            with torch.no_grad():
                test_acc = (model(x_test).argmax(1) == y_test).float().mean().item()
            run.log({"test_acc": test_acc})
            run.probe()
            print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, test acc {test_acc:.3f}")
    sent = run.counters
    print(f"records: {sent.sent} sent, {sent.spooled} spooled, {sent.dropped} dropped")
    return run.id


def fetch_plots(server: str, run_id: str, out: Path) -> list[Path]:
    """Save the run's plots from the server's PNG endpoints into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    base = f"{server}/api/v1/runs/{run_id}"
    written = []
    with httpx.Client(timeout=60) as http:
        tensors = http.get(f"{base}/tensors").raise_for_status().json()["data"]
        activations = [t["name"] for t in tensors if t["kind"] == "activation"]
        weights = [t["name"] for t in tensors if t["kind"] == "weight" and "weight" in t["name"]]
        relus = [name for name in activations if name.startswith("relu")]
        plots: dict[str, tuple[str, dict[str, Any]]] = {
            "loss.png": ("scalars.png", {"name": ["loss"]}),
            "accuracy.png": ("scalars.png", {"name": ["train_acc", "test_acc"]}),
            "activations_std.png": ("series.png", {"tensor": activations, "stat": "std"}),
            # the fraction of dead (zero) ReLU outputs
            "relu_zero_frac.png": ("series.png", {"tensor": relus, "stat": "zero_frac"}),
            "distributions_fc2.png": ("distributions.png", {"tensor": "fc2"}),
            "weights_before_after.png": ("histogram.png", {"tensor": "fc1.weight"}),
            "gradient_flow.png": ("gradient-flow.png", {}),
            "weight_change.png": ("weight-change.png", {"tensor": weights}),
            "dead_units.png": ("dead-units.png", {}),
            # the held-out probe, epoch by epoch: how the narrowest layer separates digits
            "scatter_by_epoch.png": ("scatter.png", {"grid": True, "height": 700}),
            "tsne.png": ("embedding.png", {}),
            "class_means.png": ("class-means.png", {}),
            "layer_outputs.png": ("layer-outputs.png", {}),
            "confusion.png": ("confusion.png", {}),
            "attributions.png": ("attributions.png", {}),
            "model.png": ("model.png", {}),
        }
        for filename, (view, params) in plots.items():
            response = http.get(f"{base}/plots/{view}", params=params)
            response.raise_for_status()
            path = out / filename
            path.write_bytes(response.content)
            written.append(path)
    return written


def print_findings(server: str, run_id: str) -> None:
    """Print what the server's diagnosis finds wrong with the run ("no findings" if nothing)."""
    import layerwatch
    from layerwatch_server.cli.check import format_findings

    with layerwatch.Api(server, timeout=60.0) as api:
        findings = api.run(run_id).findings()
    print(f"findings ({server}/api/v1/runs/{run_id}/findings):")
    print(format_findings(findings))


BROKEN_LR = 0.5
"""The learning rate of ``demo --broken``: 500 times the demo's, far too high for Adam."""
SERVE_PACE = 0.1
"""Seconds per batch with ``--serve``: about two seconds an epoch, to watch it learn."""


def run_demo(
    *,
    out: str | Path,
    epochs: int | None = None,
    port: int = 0,
    serve: bool = False,
    broken: bool = False,
) -> int:
    """Serve, train, fetch the plots, print the findings; with ``serve``, train slowly (40
    epochs by default) while the dashboard shows it, then keep serving until Ctrl-C; with
    ``broken``, train a deliberately broken network instead."""
    if epochs is None:
        epochs = 40 if serve else 8
    out = Path(out).resolve()
    # Loopback only: open while its database has no token, answering loopback names only.
    settings = Settings(data_dir=out / "data", allow_open=True, allowed_hosts=list(LOOPBACK_HOSTS))
    started = time.perf_counter()
    with serve_in_thread(create_app(settings), port=port) as server:
        print(f"layerwatch server: {server} (SQLite at {settings.data_dir / 'layerwatch.db'})")

        def announce(run_id: str) -> None:
            if serve:
                print(f"dashboard: {server}/runs/{run_id}  (all runs: {server}/)", flush=True)

        run_id = train(
            server, epochs=epochs, pace=SERVE_PACE if serve else 0.0, on_start=announce,
            broken=broken,
        )  # fmt: skip
        plots = fetch_plots(server, run_id, out / "plots")
        print(f"run {run_id}: {server}/api/v1/runs/{run_id}")
        print(f"{len(plots)} plots in {out / 'plots'}:")
        for path in plots:
            print(f"  {path.name}")
        print_findings(server, run_id)
        print(f"done in {time.perf_counter() - started:.1f} s")
        if serve:
            print(f"dashboard: {server}/runs/{run_id}; serving until Ctrl-C", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return 0
