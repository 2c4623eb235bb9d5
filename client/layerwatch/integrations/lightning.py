"""`LayerwatchCallback` for PyTorch Lightning: `Trainer(callbacks=[LayerwatchCallback()])`.

Needs the extra `layerwatch[lightning]`; importing this module imports Lightning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import lightning.pytorch as pl
import torch

from layerwatch import wire
from layerwatch.integrations.trainer_run import RunSettings, TrainerRun
from layerwatch.options import Histograms, Probe

if TYPE_CHECKING:
    from layerwatch.capture.selection import Selection
    from layerwatch.probe.inputs import ProbeInputs
    from layerwatch.run import Run

__all__ = ["LayerwatchCallback"]


class LayerwatchCallback(pl.Callback):
    """Send a Lightning fit's activations, weights, gradients and logged metrics to a
    layerwatch server.

    Usage:

    ```python
    from layerwatch.integrations.lightning import LayerwatchCallback

    trainer = L.Trainer(max_steps=1000, callbacks=[LayerwatchCallback(project="mnist", every=50)])
    trainer.fit(model, train_loader, val_loader)
    ```

    **Steps** are Lightning's `trainer.global_step`: the `LightningModule`'s single
    optimizer (unwrapped from its `LightningOptimizer`) advances the run's step, with
    automatic or manual optimization and with gradient accumulation (one step per
    update). With several optimizers (manual optimization) the run's step is brought
    to the global step after each batch, and weights and gradients are read then.

    **Metrics.** What the module logs with `self.log(..., logger=True)` (the default)
    becomes scalars, under the names Lightning's loggers use (`loss`, `acc_step`,
    `acc_epoch`, `val_loss`): a metric logged in `training_step` at the step of its
    batch (its global step when `training_step` ran, as for Lightning's loggers);
    validation and epoch-end metrics at `trainer.global_step` when they are computed
    (the updates the evaluated model has had). A metric is sent again only when it
    was logged again; with gradient accumulation, its last value before the update.

    **Distributed** strategies: every process records with its rank into one run
    (rank 0 makes the id and broadcasts it); only rank 0 probes. **Status**: the run
    is marked `finished` at the end of the fit, `failed` when it raises (or is
    interrupted).

    Parameters:

    * **server**, **project**, **name**, **config**, **id**, **tags** - as for
      `layerwatch.Run`; the run is made when the fit starts.
    * **every** - capture steps `k` with `k % every == 0`.
    * **include**, **exclude**, **histograms** - as for `Run.watch()`, with module
      names of the `LightningModule` (`net.0`, `encoder.layers.3`).
    * **probe** - as for `Run.watch()`: inputs for the module's `forward`; a
      `layerwatch.Probe` without `every` (or bare inputs) is probed at the end of each
      training epoch.
    * **log_metrics** - forward `self.log`-ged metrics (default True).

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
        self._batch_step = 0
        self._sent: dict[str, torch.Tensor] = {}  # the last value sent of each metric

    @property
    def run(self) -> Run | None:
        """The run of the current or last fit (None before a fit starts)."""
        return None if self._trainer_run is None else self._trainer_run.run

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Called when fit, validate, test or predict begins: a fit makes the run."""
        if stage != "fit":
            return
        run_id = trainer.strategy.broadcast(self._settings.new_id())
        self._trainer_run = TrainerRun(self._settings, run_id)
        self._sent.clear()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Called when training begins, after the optimizers are set up."""
        if self._trainer_run is not None:
            self._trainer_run.watch(pl_module, trainer.optimizers, trainer.global_step)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int
    ) -> None:
        """Called before each training batch: the step its metrics belong to."""
        self._batch_step = trainer.global_step

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
    ) -> None:
        """Called after each training batch; the global step has moved if it updated."""
        if self._trainer_run is None:
            return
        self._trainer_run.follow(trainer.global_step)
        if trainer.global_step != self._batch_step:
            self._send_metrics(trainer, self._batch_step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Called when a validation loop ends (also the sanity check before training)."""
        if not trainer.sanity_checking:
            self._send_metrics(trainer, trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Called when a training epoch ends: epoch-level metrics, and the epoch's probe."""
        self._send_metrics(trainer, trainer.global_step)
        if self._trainer_run is not None:
            self._trainer_run.probe_at_epoch_end()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Called when the fit ends without an exception."""
        self._send_metrics(trainer, trainer.global_step)
        self._finish("finished")

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Called when the fit raises, or is interrupted (Ctrl-C)."""
        self._finish("failed")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Called when fit, validate, test or predict ends: a run left open is closed."""
        if stage == "fit":
            self._finish("finished")

    def _send_metrics(self, trainer: pl.Trainer, step: int) -> None:
        """Forward the metrics logged since they were last sent.

        `trainer.logged_metrics` keeps old values beside new ones; a metric logged
        again is a new tensor (Lightning copies each logged value), so its storage
        differs from the one sent before, which `_sent` keeps alive.
        """
        if self._trainer_run is None or not self._log_metrics:
            return
        fresh: dict[str, object] = {}
        for key, value in trainer.logged_metrics.items():
            previous = self._sent.get(key)
            if isinstance(value, torch.Tensor) and (
                previous is None or previous.data_ptr() != value.data_ptr()
            ):
                fresh[key] = value
                self._sent[key] = value
        self._trainer_run.log(fresh, step)

    def _finish(self, status: wire.RunStatus) -> None:
        if self._trainer_run is not None:
            self._trainer_run.finish(status)  # once: later calls do nothing
