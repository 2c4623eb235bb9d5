"""The Transformers callback against a live server: a two-layer GPT-2 made from its
config (nothing downloaded) trained by the `Trainer` with gradient accumulation."""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

import layerwatch  # noqa: E402
from layerwatch.integrations.transformers import LayerwatchCallback  # noqa: E402

STEPS = 6


class Tokens(Dataset[dict[str, torch.Tensor]]):
    """Random token sequences that are their own labels."""

    def __init__(self, count: int, length: int = 8) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 100, (count, length), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


class Raising(transformers.TrainerCallback):  # type: ignore[misc]
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 2:
            raise RuntimeError("boom")


def _trainer(tmp_path: Path, callbacks: list[Any], **kwargs: Any) -> Any:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, logging_steps=1, report_to=[], save_strategy="no",
        use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, **kwargs,
    )  # fmt: skip
    return transformers.Trainer(
        model=transformers.GPT2LMHeadModel(config), args=args, train_dataset=Tokens(64),
        eval_dataset=Tokens(8), callbacks=callbacks,
    )  # fmt: skip


def _project() -> str:
    return "transformers-" + uuid.uuid4().hex[:8]


def _scalar(api: httpx.Client, run_id: str, name: str) -> dict[int, float]:
    series = api.get(f"/runs/{run_id}/scalars/series", params={"name": name}).raise_for_status()
    return dict(zip(series.json()["steps"], series.json()["values"], strict=True))


def _stat_steps(api: httpx.Client, run_id: str, tensor: str, kind: str) -> list[int]:
    params = {"tensor": tensor, "kind": kind, "stat": "mean"}
    response = api.get(f"/runs/{run_id}/series", params=params).raise_for_status()
    return list(response.json()["steps"])


def test_trainer_logs_and_tensors_at_global_steps(
    live_server: str, api: httpx.Client, tmp_path: Path
) -> None:
    probe = layerwatch.Probe({"input_ids": Tokens(4).ids}, every=3)
    callback = LayerwatchCallback(
        live_server, project=_project(), every=2, config={"tiny": True}, probe=probe
    )
    trainer = _trainer(tmp_path, [callback], eval_strategy="steps", eval_steps=3)
    trainer.train()
    assert callback.run is not None
    run_id = callback.run.id
    assert trainer.state.global_step == STEPS
    assert callback.run.current_step == STEPS

    run = api.get(f"/runs/{run_id}").raise_for_status().json()
    assert run["status"] == "finished"
    assert run["config"] == {"tiny": True}

    # The Trainer's logs, at the steps of its log history.
    history = trainer.state.log_history
    for name in ("loss", "learning_rate", "grad_norm", "eval_loss"):
        logged = {e["step"]: e[name] for e in history if name in e}
        assert logged, name
        stored = _scalar(api, run_id, name)
        assert stored.keys() == logged.keys(), name
        assert all(math.isclose(stored[k], v, rel_tol=1e-6) for k, v in logged.items())
    assert set(_scalar(api, run_id, "loss")) == set(range(1, STEPS + 1))
    assert set(_scalar(api, run_id, "eval_loss")) == {3, 6}
    assert "train_loss" in api.get(f"/runs/{run_id}/scalars").json()["data"]

    # Two micro-batches per update, one record per step: steps 0, 2, 4 of 0..5.
    for tensor, kind in [
        ("transformer.h.0.mlp.c_fc", "activation"),
        ("transformer.h.1.attn.c_attn.weight", "weight"),
        ("transformer.h.1.attn.c_attn.weight", "grad"),
    ]:
        assert _stat_steps(api, run_id, tensor, kind) == [0, 2, 4], (tensor, kind)
    probes = api.get(f"/runs/{run_id}/probes").raise_for_status().json()["data"]
    assert [p["step"] for p in probes] == [3, 6]  # rank 0 runs the probe's dict as model(**x)


def test_a_failed_training_is_marked_by_finish(
    live_server: str, api: httpx.Client, tmp_path: Path
) -> None:
    callback = LayerwatchCallback(live_server, project=_project(), every=1)
    trainer = _trainer(tmp_path, [callback, Raising()])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    assert callback.run is not None
    assert not callback.run.closed  # the Trainer tells callbacks nothing
    callback.finish("failed")
    assert callback.run.closed
    run_id = callback.run.id
    assert api.get(f"/runs/{run_id}").json()["status"] == "failed"
    assert _stat_steps(api, run_id, "transformer.h.0.mlp.c_fc", "activation") == [0, 1]
