"""`Run`: the one entry point of the client, a facade over the data path.

A run wires the steps together: `capture` (hooks, step clock) hands records to
`reduce` (statistics on the tensor's device) and on to `delivery` (queue, batches,
spool, HTTP). Over 400 lines for its docstrings alone: the public API is documented
where it is defined, and that is about half of this module's lines.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import logging
import os
import socket
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping
from types import TracebackType

import httpx
import pydantic
import torch

from layerwatch import wire
from layerwatch.capture.clock import StepClock
from layerwatch.capture.models import ModelNames, unwrap_model, unwrap_optimizer
from layerwatch.capture.selection import (
    Selection,
    select_modules,
    select_outputs,
    select_parameters,
)
from layerwatch.capture.watch import Watch
from layerwatch.delivery.counters import Counters, report
from layerwatch.delivery.pipeline import Delivery
from layerwatch.delivery.queue import Buffer
from layerwatch.delivery.spool.disk import open_run_spool
from layerwatch.delivery.spool.files import resolve_spool_root
from layerwatch.delivery.transport import make_client
from layerwatch.delivery.verdict import ask_verdict
from layerwatch.errors import ConfigError, RunClosedError
from layerwatch.logs import OnceLog
from layerwatch.options import (
    DEFAULT_SERVER,
    Histograms,
    Probe,
    capture_options,
    check_count,
    check_seconds,
    resolve_probe,
    resolve_server,
)
from layerwatch.probe.inputs import ProbeInputs
from layerwatch.probe.prober import Prober
from layerwatch.records import ScalarRecord, TensorMeta
from layerwatch.reduce.worker import DEFAULT_MAX_PENDING_BYTES, Reducer

__all__ = ["DEFAULT_SERVER", "Run"]


_STATUS_GRACE = 2.0  # seconds


class Run:
    """A training run whose activations and scalars are sent to a layerwatch server.

    Usage:

    ```python
    import layerwatch

    with layerwatch.Run("http://localhost:8000", name="mlp-baseline") as run:
        run.watch(model, optimizer, every=50)
        for x, y in loader:
            loss = loss_fn(model(x), y)
            loss.backward()
            run.log({"loss": loss})  # before the optimizer step it belongs to
            optimizer.step()  # advances the run's step
            optimizer.zero_grad()
    ```

    **Steps.** Step `k` is the `k`-th optimizer step, counted from 0. When `watch()`
    is given the optimizer, its `step()` advances the run's step (through
    `register_step_post_hook`); otherwise call `run.step()` after each optimizer step.
    The activations recorded for step `k` come from the forward passes whose
    gradients optimizer step `k` applies: those between step `k - 1` and step `k`.
    With `every=N` the steps `k` with `k % N == 0` are captured. Only forward passes
    run with gradients enabled count, so an evaluation pass under `torch.no_grad()`
    records nothing; with gradient accumulation, the first forward pass of a
    captured step is recorded, one record per module per step. Scalars logged
    without an explicit step get the current step: log a step's loss before
    `optimizer.step()`, or pass `step=`.

    **Failure.** Bad arguments raise `ConfigError` here. After that nothing is raised
    into training code (except `RunClosedError` on a closed run): `Run(...)` returns
    at once and creates the run on the server from a background thread; network
    failures are logged once and retried with backoff; when the queue is full new
    records are dropped and counted; a failing hook disables its `Watch`. Batches
    not yet taken by the server wait in an on-disk spool, so neither an outage nor
    a killed process loses them: `layerwatch sync` sends what a process left.

    **Closing.** Leaving the `with` block, or calling `close()` / `finish()`, removes
    the hooks, sends what is queued (waiting at most `timeout` seconds), marks the run
    `finished` (`failed` when the block raised), closes the HTTP client the run
    created and logs one line with the counts of sent, spooled (left on disk for
    `layerwatch sync`) and dropped records.

    Parameters:

    * **server** - base URL of the server; defaults to `$LAYERWATCH_SERVER`, then to the
      injected `http` client's `base_url`, then to `http://127.0.0.1:8000`.
    * **project**, **name**, **config**, **tags** - stored with the run; `config` is any JSON.
    * **id** - run id (letters, digits, `_.-`, up to 64); reuse one to resume a run.
      Defaults to a new random id.
    * **every** - default capture interval of `watch()`, in steps.
    * **flush_secs** - longest time a record waits before it is sent.
    * **max_queue** - records that may wait for the sender; more are dropped.
    * **batch_size** - most records per request.
    * **timeout** - seconds for each request of the client the run makes, and for
      `flush()` and closing by default.
    * **backoff** - first retry delay in seconds; doubles per failure, up to a minute.
    * **spool_dir** - folder of the on-disk spool of unsent batches, one subfolder per
      run; defaults to `$LAYERWATCH_SPOOL_DIR`, then `~/.cache/layerwatch/spool`.
      `None` (or `False`) keeps them in memory only (at most `max_queue` records, and
      at least 100 batches), and drops them at exit.
    * **max_spool_bytes** - most bytes of unsent batches kept; the oldest are dropped
      beyond it. Defaults to 1 GiB.
    * **max_copy_bytes** - most bytes of CPU tensor copies waiting for the reducer
      thread (as much again is kept, free, for reuse). A capture that would start
      with more waiting is skipped whole and counted in `counters.skipped_captures`.
      Defaults to 32 MiB.
    * **http** - an `httpx.Client` to send with (e.g. one with a `MockTransport`); it is
      not closed by the run. By default the run makes one, sending
      `Authorization: Bearer $LAYERWATCH_TOKEN` when that variable is set.
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
        flush_secs: float = 2.0,
        max_queue: int = 10_000,
        batch_size: int = 1_000,
        timeout: float = 10.0,
        backoff: float = 0.5,
        http: httpx.Client | None = None,
        spool_dir: str | os.PathLike[str] | bool | None = True,
        max_spool_bytes: int = 2**30,
        max_copy_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    ) -> None:
        self._every = check_count("every", every)
        check_count("max_queue", max_queue)
        check_count("max_spool_bytes", max_spool_bytes)
        check_count("max_copy_bytes", max_copy_bytes)
        self._spool_root = resolve_spool_root(spool_dir)
        check_count("batch_size", batch_size)
        check_seconds(flush_secs=flush_secs, timeout=timeout, backoff=backoff)
        if http is not None and not isinstance(http, httpx.Client):
            raise ConfigError(f"`http` must be an httpx.Client, not {type(http).__name__}")
        self._server = resolve_server(server, http)
        if isinstance(tags, str):
            tags = [tags]
        try:
            self._create = wire.RunCreate(
                id=uuid.uuid4().hex if id is None else id,
                project=project,
                name=name,
                config=dict(config or {}),
                tags=list(tags),
                host=socket.gethostname()[: wire.MAX_NAME_LENGTH],
            )
        except (pydantic.ValidationError, TypeError) as exc:
            raise ConfigError(f"invalid run settings: {exc}") from None
        assert self._create.id is not None
        self._id: str = self._create.id
        self._timeout = timeout

        self._owns_http = http is None
        self._http = http if http is not None else make_client(timeout=timeout)
        self._buffer = Buffer(max_queue)
        self._tensors: dict[tuple[str, wire.Kind], TensorMeta] = {}
        open_spool = None
        if self._spool_root is not None:
            open_spool = functools.partial(
                open_run_spool, self._spool_root, server=self._server, run=self._create,
                max_bytes=max_spool_bytes,
            )  # fmt: skip
        self._delivery = Delivery(
            http=self._http, server=self._server, run=self._create, buffer=self._buffer,
            tensors=self._tensors, flush_secs=flush_secs, batch_size=batch_size,
            backoff=backoff, open_spool=open_spool,
        )  # fmt: skip
        self._reducer = Reducer(self._buffer.put, self._buffer.count_dropped, max_copy_bytes)
        self._clock = StepClock()
        self._models = ModelNames()
        self._log_once = OnceLog()
        self._scalar_steps: dict[str, int] = {}  # the step each scalar was last logged at
        self._repeated = 0
        self._lock = threading.Lock()
        self._closed = False
        self._flushed = False
        self._delivery.start()
        self._atexit = functools.partial(_finish_at_exit, weakref.ref(self))
        atexit.register(self._atexit)

    # -- properties ----------------------------------------------------------------

    @property
    def id(self) -> str:
        """The run id on the server."""
        return self._id

    @property
    def server(self) -> str:
        return self._server

    @property
    def current_step(self) -> int:
        """Optimizer steps taken so far: the step the next forward pass belongs to."""
        return self._clock.step

    @property
    def counters(self) -> Counters:
        """Records sent, spooled (on disk, not yet sent) and dropped, batches given up,
        scalar values not sent because their step had one (`log()`), and captures
        skipped because the reducer was a whole bound of copies behind."""
        return dataclasses.replace(
            self._delivery.counters,
            repeated=self._repeated,
            skipped_captures=self._reducer.skipped_captures,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    # -- training-loop API -----------------------------------------------------------

    def watch(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        every: int | None = None,
        include: Selection = None,
        exclude: Selection = None,
        *,
        name: str | None = None,
        activations: bool = True,
        weights: bool = True,
        gradients: bool = True,
        unit_means: bool = True,
        weight_change: bool = True,
        sentinel: bool = True,
        histograms: int | Histograms | None = wire.DEFAULT_BINS,
        probe: Probe | ProbeInputs | tuple[ProbeInputs, torch.Tensor | None] | None = None,
    ) -> Watch:
        """Capture `model`'s activations, weights and gradients every `every` steps.

        Usage:

        ```python
        watch = run.watch(model, optimizer, every=100, exclude="*.dropout")
        watch = run.watch(model, optimizer, include=[nn.Linear, nn.Conv2d], histograms=128)
        watch = run.watch(model, optimizer, probe=layerwatch.Probe(x_val, y_val, every=500))

        # A GAN: two models, two optimizers; the generator's optimizer, watched
        # first, counts the run's steps.
        run.watch(generator, opt_g, name="generator")
        run.watch(discriminator, opt_d, name="discriminator")
        ```

        **What is recorded.** The output of each chosen leaf module (one without
        children), of each attention block (`nn.MultiheadAttention`: its attention
        output, the first element of the tuple it returns; its `out_proj` is never
        called as a module and is not recorded as one, though its weights are), and,
        with `include`, of each module with children that an `include` item names
        without also matching modules inside it (`include="*.self_attn"`,
        `include=nn.TransformerEncoderLayer`). Recorded is the first forward pass run
        with gradients enabled in a captured step: with gradient accumulation, the
        first micro-batch; for a GAN's discriminator, the first batch it sees in the
        step (the real one, in the usual loop that scores real images first).

        **Wrapped models and optimizers.** A `torch.compile`d model and one wrapped in
        `DistributedDataParallel` or `DataParallel` are watched inside their wrappers,
        so tensors keep the names of the user's modules (`encoder.0`, not
        `_orig_mod.encoder.0` or `module.encoder.0`) and compare with eager runs.
        An optimizer wrapper keeping the real optimizer in `.optimizer` (accelerate's
        `AcceleratedOptimizer`, which the Hugging Face Trainer uses) or `._optimizer`
        (Lightning's `LightningOptimizer`) is unwrapped.

        **Several models.** Each watched model has a name in the run (`name`, by
        default its class name made unique: `Sequential`, `Sequential-2`, ...), under
        which its module tree is stored. While a run watches one model its tensors
        keep their bare names (`0.weight`); once it watches a second, each model's
        tensors are named `<name>/<module>` (`generator/0.weight`); names are
        decided at `watch()` time, so watch every model before training. Watching a
        model again reuses its name, and must choose modules and parameters no other
        active watch of it has (e.g. a different `every` for the head): a `watch()`
        overlapping an active one raises `ConfigError` (call `remove()` on the first).

        **Several optimizers.** The first optimizer given to `watch()` counts the run's
        steps: step `k` ends with its `k`-th `step()`. Any other optimizer marks when
        the weights and gradients of the models watched with it are read: at its
        first `step()` in each captured run step. So watch first the model whose
        optimizer steps last in each iteration (in the usual GAN loop, the
        generator's), so that each iteration is one step.

        **Closures.** `optimizer.step(closure)` (LBFGS, or Lightning's automatic
        optimization) runs the backward pass inside `step()`: gradients are then read
        when the closure first returns, so step `k` records the gradients step `k`
        applies. LBFGS evaluates the closure again at the weights it moves to; the
        first evaluation is recorded, at the weights the step started from, together
        with its forward pass.

        Parameters:

        * **model** - the `torch.nn.Module`, or a `torch.compile`, DDP or
          `DataParallel` wrapper of it.
        * **optimizer** - its steps mark when weights and gradients are read (just
          before the update); the first one watched also advances the run's step.
          Without any, call `run.step()` after each update (weights and gradients
          are then read at that call, and the update-to-weight ratio is unknown).
        * **every** - capture steps `k` with `k % every == 0`; defaults to the run's.
        * **include**, **exclude** - modules to keep or leave out: name patterns
          (`fnmatch` globs such as `"encoder.*"`, or compiled regular expressions,
          matching the whole qualified name of `model.named_modules()`) or module
          classes (`nn.Linear`; subclasses match); one or a list, any item matching.
        * **name** - the model's name in the run (up to 100 characters, no `/`).
        * **activations** - record module outputs (see above).
        * **weights**, **gradients** - record the chosen modules' own parameters and
          their gradients.
        * **unit_means** - record per-unit means of activations (per output feature,
          or per channel of convolution outputs; the first 4096 units).
        * **weight_change** - record each parameter's relative change since the
          previous capture and since now, and the update-to-weight ratio; keeps two
          copies of the watched parameters on their device.
        * **sentinel** - on every step, captured or not, check each recorded module
          output and each watched gradient for NaN and inf on its device (no
          read-back on the training thread), and send the first step and tensor that
          turned non-finite, with the others that did at that step, with the next
          batch (`GET /api/v1/runs/{id}/nonfinite`). A few small kernels per module
          and step; under `torch.compile` every step then leaves the graph at each
          watched module. False turns it off.
        * **histograms** - bins (1-512) of each tensor's histogram over its finite
          range, a `layerwatch.Histograms` (bins and sample size), or None for none.
        * **probe** - fixed held-out inputs run through the model at each probe: a
          `layerwatch.Probe` (inputs, labels, how often, how much is kept,
          attributions), or just `(inputs, labels)` or `inputs`, probed at each
          `run.probe()`.

        Raises `ConfigError` for bad arguments, when nothing is selected, or when the
        selection overlaps an active watch of the same model.
        """
        self._check_open()
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"`model` must be a torch.nn.Module, not {type(model).__name__}")
        model = unwrap_model(model)
        if optimizer is not None:
            optimizer = unwrap_optimizer(optimizer)
        every = self._every if every is None else check_count("every", every)
        options = capture_options(
            activations=activations, weights=weights, gradients=gradients,
            unit_means=unit_means, weight_change=weight_change, histograms=histograms,
            sentinel=sentinel,
        )  # fmt: skip
        probe_options = resolve_probe(probe)
        chosen = select_modules(model, include, exclude)
        outputs = select_outputs(model, include, exclude)
        params = select_parameters(model, chosen)
        if not (outputs if activations else []) and not (params if weights or gradients else []):
            raise ConfigError(
                f"nothing of {type(model).__name__} to watch with include={include!r} "
                f"exclude={exclude!r}"
            )
        name = self._models.resolve(model, name)
        self._check_overlap(model, name, outputs if activations else [], params)
        prober = None
        if probe_options is not None:
            prober = Prober(probe_options, self._delivery.submit_probe)
        self._models.register(model, name)
        watch = Watch(
            model, outputs, params, every=every, options=options, clock=self._clock,
            put=self._buffer.put, reducer=self._reducer, tensors=self._tensors,
            name=name, prefixed=self._models.several, optimizer=optimizer, prober=prober,
        )  # fmt: skip
        if self._models.several:
            for other in self._clock.watches:
                other._use_prefix()
        return watch

    def _check_overlap(
        self,
        model: torch.nn.Module,
        name: str,
        modules: list[tuple[str, torch.nn.Module]],
        params: list[tuple[str, torch.nn.Parameter]],
    ) -> None:
        """Refuse a watch of `model` sharing modules or parameters with an active one:
        its hooks would record every tensor twice."""
        for watch in self._clock.watches:
            if watch.model is not model or not watch.active:
                continue
            shared = {n for n, _ in modules} & set(watch.names)
            shared |= {n for n, _ in params} & set(watch.parameters)
            if shared:
                listed = ", ".join(sorted(shared)[:5]) + (", ..." if len(shared) > 5 else "")
                raise ConfigError(
                    f"`{name}` is already watched ({listed}): call remove() on that watch "
                    "first, or choose other modules with `include`/`exclude`"
                )

    def probe(self) -> int:
        """Probe every watched model given `probe=` now, at the current step, e.g. at the
        end of each epoch; return the number of payloads queued.

        Usage:

        ```python
        run.watch(model, optimizer, probe=(x_val[:512], y_val[:512]))
        for epoch in range(epochs):
            train_one_epoch()
            run.probe()
        ```
        """
        self._check_open()
        watches = [w for w in self._clock.watches if w.has_probe]
        if not watches:
            self._log_once("probe", logging.WARNING,
                           "run.probe() ignored: no watch was given `probe=`")  # fmt: skip
        return sum(watch.probe() for watch in watches)

    def step(self) -> None:
        """End the current step: call once after each optimizer step, when `watch()`
        was given no optimizer.

        Usage:

        ```python
        optimizer.step()
        run.step()
        ```

        When an optimizer passed to `watch()` counts the steps, this does nothing
        (and logs that once).
        """
        self._check_open()
        if self._clock.follows_optimizer:
            self._log_once(
                "step", logging.WARNING, "run.step() ignored: the optimizer's steps are counted"
            )
            return
        self._clock.advance(manual=True)

    def log(self, values: Mapping[str, float | torch.Tensor], step: int | None = None) -> None:
        """Record scalars, e.g. the loss, at `step` (the current step by default).

        Usage:

        ```python
        run.log({"loss": loss, "lr": scheduler.get_last_lr()[0]})
        ```

        Values are numbers or one-element tensors. A tensor is copied on its device
        and read back by the sender thread, so logging never waits for the GPU.
        Values that are neither are dropped with a logged warning.

        A scalar has one value per step: the first one logged. A name logged again at
        the step it was last logged at (say a micro-batch loss, four times per
        optimizer step) is not sent; that is logged once per name and counted in
        `counters.repeated`. Log such values under their own step or name, or their
        mean once per step.
        """
        self._check_open()
        at = self._clock.step if step is None else step
        if not isinstance(at, int) or at < 0:
            self._log_once(
                "log step", logging.WARNING, f"run.log(): ignoring values at step {step!r}"
            )
            return
        now = time.time()
        for name, value in values.items():
            logged: float | torch.Tensor
            if isinstance(value, torch.Tensor):
                if value.numel() != 1 or value.is_complex():
                    self._log_once(
                        f"log {name}", logging.WARNING, f"run.log(): `{name}` is not a real scalar"
                    )
                    continue
                # A copy: the caller may change its tensor in place before the sender reads it.
                logged = value.detach().clone()
            else:
                try:
                    logged = float(value)
                except (TypeError, ValueError):
                    self._log_once(
                        f"log {name}", logging.WARNING, f"run.log(): `{name}` is not a number"
                    )
                    continue
            key = str(name)
            if self._scalar_steps.get(key) == at:
                self._repeated += 1
                self._log_once(
                    f"log again {key}", logging.WARNING,
                    f"run.log(): `{key}` logged again at step {at}; a scalar keeps its first "
                    "value per step, so later ones at that step are not sent (see "
                    "`counters.repeated`); pass `step=`, another name, or log the mean",
                )  # fmt: skip
                continue
            self._scalar_steps[key] = at
            self._buffer.put(ScalarRecord(at, key, logged, now))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record queued so far, and what the non-finite sentinel saw
        up to the last completed step, is sent, or given up; True if that happened
        within `timeout` seconds (default: the run's `timeout`).

        Usage:

        ```python
        run.log({"val_acc": acc})
        run.flush()
        ```
        """
        self._check_open()
        for watch in self._clock.watches:
            watch._report_nonfinite()
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        if not self._reducer.drain(max(deadline - time.monotonic(), 0.0)):
            return False
        return self._delivery.flush(max(deadline - time.monotonic(), 0.0))

    def finish(self, status: wire.RunStatus = "finished", *, timeout: float | None = None) -> bool:
        """Remove the hooks, send what is queued, and mark the run `status` on the server.

        Waits at most `timeout` seconds (default: the run's `timeout`) for the queue,
        logs one summary line, and returns True when everything queued was settled.
        Calling it again does nothing and returns the same value.

        Usage:

        ```python
        run.finish("crashed")  # e.g. in a signal handler
        ```
        """
        with self._lock:
            if self._closed:
                return self._flushed
            self._closed = True
        atexit.unregister(self._atexit)
        for watch in list(self._clock.watches):
            watch.remove()
        timeout = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        reduced = self._reducer.close(timeout)
        self._flushed = self._delivery.flush(max(deadline - time.monotonic(), 0.0)) and reduced
        # Past the deadline, a short grace for the final status update.
        self._delivery.stop(status, max(deadline - time.monotonic(), 0.0) + _STATUS_GRACE,
                            skipped_captures=self._reducer.skipped_captures)  # fmt: skip
        if self._owns_http:
            self._http.close()
        # The server's verdict, when it just took everything (an `http=` of the caller's
        # own, a mock say, is not asked: the run only sends through it).
        delivered = self._flushed and not (self.counters.spooled or self.counters.dropped)
        verdict = ask_verdict(self._server, self._id) if delivered and self._owns_http else None
        report(self.counters, run_id=self._id, status=status, flushed=self._flushed,
               timeout=timeout, spool_root=self._spool_root, verdict=verdict)  # fmt: skip
        return self._flushed

    def close(self, timeout: float | None = None) -> bool:
        """`finish("finished")`: remove hooks, flush, mark finished, log the summary.

        Usage:

        ```python
        run = layerwatch.Run()
        ...
        run.close()
        ```
        """
        return self.finish("finished", timeout=timeout)

    def __enter__(self) -> Run:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.finish("finished" if exc_type is None else "failed")

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"step={self._clock.step}"
        return f"<Run {self._id} {self._server} {state}>"

    # -- internals -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RunClosedError(f"run {self._id} is closed")


def _finish_at_exit(ref: weakref.ReferenceType[Run]) -> None:
    """Called at interpreter exit for a run nobody closed."""
    run = ref()
    if run is not None and not run.closed:
        run.finish("crashed" if getattr(sys, "last_value", None) is not None else "finished")
