"""Schemathesis against a real server, on SQLite and PostgreSQL: every check, no failure.

The server gets a database of its own, with an admin token that every request
sends (Schemathesis' ignored_auth check sends some without it, expecting 401),
seeded with a run holding data of every
kind (a small convolutional network trained with the real client: statistics,
histograms, unit means, weight changes, scalars, the model tree, probes with
feature maps and attributions) and a run of NaN and infinite values; the hooks
(`fuzz_hooks.py`) put their ids, names and steps into the generated requests.

Deterministic (``--generation-deterministic``) and bounded, about 5,300 cases on
SQLite and 700 on PostgreSQL: the coverage phase (every parameter's boundaries,
and methods a URL does not take) runs on SQLite, but for the images, whose
parameters are their JSON twins' and a size; both run the fuzzing (10 cases per
operation) and stateful phases. A longer run: ``LAYERWATCH_FUZZ_THOROUGH=1``
runs every phase on every operation on both, ``LAYERWATCH_FUZZ_EXAMPLES`` sets
the cases per operation (see README, "Development").
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import torch
from batches import body, make_batch, new_id, scalars_block, stats_block, weight_changes_block
from sklearn.datasets import load_digits
from torch import nn

import layerwatch
from auth_headers import SUITE_TOKEN, auth_headers
from layerwatch_server.config import Settings
from layerwatch_server.db import make_engine, make_sessionmakers, managed_session
from layerwatch_server.store.tokens import create_token

TOKEN_NAME = "fuzz-admin"
EXAMPLES = int(os.environ.get("LAYERWATCH_FUZZ_EXAMPLES", "10"))
THOROUGH = os.environ.get("LAYERWATCH_FUZZ_THOROUGH") == "1"
# Schemathesis configuration of the bounded run: no coverage phase for the images.
BOUNDED = """
[[operations]]
include-path-regex = "\\\\.png$"
phases.coverage.enabled = false
"""
PROJECT = "fuzz"


def _train(server: str) -> str:
    """A digits CNN, captured every 2 steps, probed (with attributions) twice; its run id."""
    data = load_digits()
    x = torch.tensor(data.data[:400], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(data.target[:400])
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 16), nn.ReLU(),
        nn.Linear(16, 10),
    )  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with layerwatch.Run(server, project=PROJECT, name="digits-cnn", config={"lr": 0.1}) as run:
        probe = layerwatch.Probe(x[-64:], y[-64:], attributions=4)
        run.watch(model, optimizer, every=2, probe=probe)
        for i in range(8):
            xb, yb = x[i * 32 : (i + 1) * 32], y[i * 32 : (i + 1) * 32]
            loss = nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            run.log({"loss": loss.detach()})
            optimizer.step()
            if i % 4 == 3:
                run.probe()
        assert run.counters.dropped == 0
        return run.id


def _post_odd_run(api: httpx.Client) -> str:
    """A run whose statistics, scalars and weight changes are NaN and infinite."""
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": PROJECT}).raise_for_status()
    odd = [math.nan, math.inf, -math.inf, 1.0]
    batch = make_batch(
        stats=[stats_block("fc1", range(4), mean=odd, std=odd, min=odd, max=odd, l2=odd,
                           abs_mean=odd),
               stats_block("fc1.weight", range(4), kind="grad", mean=odd, max=odd, abs_mean=odd)],
        scalars=[scalars_block("loss", range(4), odd)],
        weight_changes=[weight_changes_block("fc1.weight", range(4))],
    )  # fmt: skip
    api.post(f"/runs/{run_id}/batches", content=body(batch)).raise_for_status()
    return run_id


def _admin_token(database_url: str) -> None:
    """The suite's admin token (the one ``LAYERWATCH_TOKEN`` holds), in a migrated database."""
    engine = make_engine(database_url)
    try:
        with managed_session(make_sessionmakers(engine)[1]) as session:
            create_token(session, name=TOKEN_NAME, scope="admin", secret=SUITE_TOKEN)
    finally:
        engine.dispose()


def _seed(server: str) -> dict[str, Any]:
    """Seed the server; what the fuzz hooks may use: ids, names and steps that exist."""
    with httpx.Client(base_url=f"{server}/api/v1", timeout=30, headers=auth_headers()) as api:
        runs = [_train(server), _post_odd_run(api)]
        tensors = {t["name"] for r in runs for t in api.get(f"/runs/{r}/tensors").json()["data"]}
        probes = api.get(f"/runs/{runs[0]}/probes").json()["data"]
        models = api.get(f"/runs/{runs[0]}/model").json()["data"]
    assert probes[0]["attributions"]
    assert models
    return {
        "runs": runs,
        "projects": [PROJECT],
        "tensors": sorted(tensors),
        "scalars": ["loss"],
        "layers": sorted({layer["name"] for probe in probes for layer in probe["layers"]}),
        "models": [model["name"] for model in models],
        "steps": sorted({0, 2, *(probe["step"] for probe in probes)}),
        "token": TOKEN_NAME,
    }


def test_schemathesis_finds_nothing(
    backend: str,
    empty_database_url: str,
    serve: Callable[[Settings], AbstractContextManager[str]],
    tmp_path: Path,
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text("" if THOROUGH else BOUNDED)
    coverage = THOROUGH or backend == "sqlite"
    phases = "examples,coverage,fuzzing,stateful" if coverage else "examples,fuzzing,stateful"
    # No write rate limit: a 429 would be documented, but come at random.
    settings = Settings(database_url=empty_database_url, ingest_rate_limit=0)
    with serve(settings) as server:  # migrates the database; refuses all until a token exists
        _admin_token(empty_database_url)
        seed = _seed(server)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path]),
            "SCHEMATHESIS_HOOKS": "fuzz_hooks",
            "LAYERWATCH_FUZZ_SEED": json.dumps(seed),
        }
        command = [
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
            f"{server}/openapi.json", "--checks", "all", "--phases", phases,
            "--max-examples", str(EXAMPLES), "--generation-deterministic", "--workers", "1",
            "--no-color", "--request-timeout", "60",
            "--header", f"Authorization: Bearer {SUITE_TOKEN}",
        ]  # fmt: skip
        # In tmp_path: Schemathesis keeps a cache in the folder it runs in.
        result = subprocess.run(
            command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1200
        )
    summary = result.stdout[result.stdout.rfind("SUMMARY") :]
    print(summary)
    assert result.returncode == 0, result.stdout[-20_000:] + result.stderr[-5000:]
