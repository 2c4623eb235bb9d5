"""`LayerwatchCallback` for Hugging Face Transformers: `Trainer(callbacks=[LayerwatchCallback()])`.

Needs the extra `layerwatch[transformers]`; importing this module imports Transformers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from layerwatch import wire
from layerwatch.integrations.trainer_run import RunSettings, TrainerRun
from layerwatch.options import Histograms, Probe

if TYPE_CHECKING:
    from layerwatch.capture.selection import Selection
    from layerwatch.probe.inputs import ProbeInputs
    from layerwatch.run import Run

__all__ = ["LayerwatchCallback"]


class LayerwatchCallback(TrainerCallback):
    """Send a Hugging Face `Trainer`'s activations, weights, gradients and logs to a
    layerwatch server.

    Usage:

    ```python
    from layerwatch.integrations.transformers import LayerwatchCallback

    callback = LayerwatchCallback(project="gpt2-tiny", every=50)
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[callback])
    trainer.train()
    ```

    **Steps** are the Trainer's `state.global_step`: its optimizer (unwrapped from
    accelerate's `AcceleratedOptimizer`) advances the run's step once per update, with
    or without gradient accumulation.

    **Logs.** Every number the Trainer logs (`loss`, `learning_rate`, `grad_norm`,
    `epoch`, `eval_loss` and the other `eval_*` metrics, the final `train_loss`...)
    becomes a scalar of the same name at the global step the Trainer logs it at, as
    in `trainer.state.log_history`: the `loss` and `learning_rate` at global step
    `g` are those of the `g`-th update, whose activations the run records at step
    `g - 1` (steps count from 0); `eval_*` at step `g` evaluate the model after `g`
    updates.

    **Distributed** training: every process records with its rank into one run
    (rank 0 makes the id and broadcasts it); only rank 0 probes. **Status**: the run
    is marked `finished` when training ends. The Trainer tells callbacks nothing when
    training raises: mark the run yourself, or let the process end (a run left open
    by an uncaught exception is marked `crashed` at exit):

    ```python
    try:
        trainer.train()
    except BaseException:
        callback.finish("failed")
        raise
    ```

    Parameters:

    * **server**, **project**, **name**, **config**, **id**, **tags** - as for
      `layerwatch.Run`; the run is made when training begins.
    * **every** - capture steps `k` with `k % every == 0`.
    * **include**, **exclude**, **histograms** - as for `Run.watch()`, with the
      model's module names (`transformer.h.0.mlp.c_fc`).
    * **probe** - as for `Run.watch()`; a `layerwatch.Probe` without `every` (or bare
      inputs) is probed at the end of each epoch. Inputs given as a dict are passed
      as keyword arguments (`model(**inputs)`).
    * **log_metrics** - forward the Trainer's logs (default True).

    Raises `ConfigError` here for bad arguments.
    """

    def __init__(
        self,
        server: str | None = None,
        project: str = "default",
        name: str | None = None,
        config: Mapping[str, object] | None = None,
        *,
        id: str | None = None,
        tags: Iterable[str] = (),
        every: int = 10,
        include: Selection = None,
        exclude: Selection = None,
        histograms: int | Histograms | None = wire.DEFAULT_BINS,
        probe: Probe | ProbeInputs | tuple[ProbeInputs, torch.Tensor | None] | None = None,
        log_metrics: bool = True,
    ) -> None:
        self._settings = RunSettings.check(
            server, project, name, config, id=id, tags=tags, every=every, include=include,
            exclude=exclude, histograms=histograms, probe=probe,
        )  # fmt: skip
        self._log_metrics = log_metrics
        self._trainer_run: TrainerRun | None = None

    @property
    def run(self) -> Run | None:
        """The run of the current or last training (None before training begins)."""
        return None if self._trainer_run is None else self._trainer_run.run

    def finish(self, status: wire.RunStatus = "finished") -> None:
        """Mark the run `status` (e.g. `failed` after `trainer.train()` raised) and close
        it; does nothing when it is closed, or was never made."""
        if self._trainer_run is not None:
            self._trainer_run.finish(status)

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        optimizer: object = None,
        **kwargs: object,
    ) -> None:
        """Called when `trainer.train()` begins, after the optimizer is made."""
        self.finish()  # a run left by an earlier `train()` on this callback
        self._trainer_run = TrainerRun(self._settings, _shared_id(self._settings.new_id()))
        if model is not None:
            optimizers = [] if optimizer is None else [optimizer]
            self._trainer_run.watch(model, optimizers, state.global_step)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
        **kwargs: object,
    ) -> None:  # fmt: skip
        """Called after each update, once the global step has moved."""
        if self._trainer_run is not None:
            self._trainer_run.follow(state.global_step)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, object] | None = None,
        **kwargs: object,
    ) -> None:
        """Called when the Trainer logs: training logs, evaluation metrics, the summary."""
        if self._trainer_run is not None and self._log_metrics and logs:
            self._trainer_run.log(logs, state.global_step)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
        **kwargs: object,
    ) -> None:  # fmt: skip
        """Called at the end of each epoch: the epoch's probe."""
        if self._trainer_run is not None:
            self._trainer_run.probe_at_epoch_end()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
        **kwargs: object,
    ) -> None:  # fmt: skip
        """Called when `trainer.train()` ends without an exception."""
        self.finish("finished")


def _shared_id(run_id: str) -> str:
    """Rank 0's run id on every process of a distributed training."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return run_id
    shared: list[object] = [run_id]
    dist.broadcast_object_list(shared, src=0)
    return str(shared[0])
