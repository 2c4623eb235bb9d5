"""Client overhead: training step time with layerwatch, wandb.watch and TensorBoard.

Each measurement is a fresh process on CPU with one torch thread: it builds a
workload (an MLP or a small CNN on synthetic data), attaches one logging mode,
runs untimed warm-up steps, then times every training step. Each mode is
paired with a baseline process (no logging) run next to it, the order
alternating from pair to pair; the figure is the median over pairs of the
ratio of the mode's step time to its baseline's. Beside it: the ratio of the
training process's CPU time per step (all its threads: the client's reducer and
sender included, the server not) and its peak RSS.

Every mode trains with the same loop, the one users write:
`optimizer.zero_grad(set_to_none=True)`, forward, backward, `optimizer.step()`,
then the loss logged as a float (`loss.item()`).

    python bench/overhead.py           # M and C, all modes, 5 pairs: about 25 minutes
    python bench/overhead.py --quick   # a smoke run of about two minutes
    python bench/overhead.py --workloads M --modes layerwatch --every 10 --pairs 3
    python bench/overhead.py --help

The layerwatch modes talk HTTP to a real server (``layerwatch server``) that the
benchmark starts on a free port with a throw-away SQLite database. wandb runs
offline and TensorBoard writes event files, both into temporary folders. A
peer that is not installed (``pip install -e ".[bench]"``) is reported as
skipped. It reports and exits 0; it never fails on a missed target. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from report import machine, markdown

if TYPE_CHECKING:
    import torch

FAMILIES = ("layerwatch", "layerwatch-step", "layerwatch-nosentinel", "wandb", "tensorboard")
# layerwatch: `run.watch(model, optimizer)`: the optimizer's step advances the run's step
# layerwatch-step: `run.watch(model)` without the optimizer, and `run.step()` after each step
# layerwatch-nosentinel: as layerwatch, with `sentinel=False` (no NaN/inf check on every step)
PEERS = ("wandb", "tensorboard")
TARGETS = {1: 1.30, 10: 1.03}  # layerwatch step time / baseline step time, by capture interval
UNCAPTURED = 1000  # at this interval almost every step is uncaptured: its cost should be noise
BLOCK = 10  # steps per timing block: one capture per block at every=1, 2, 5 or 10
FULL_CAPTURE = ("activations", "weights", "gradients", "stats", "statistics", "histograms")
BATCHES = 4  # synthetic batches, cycled
LR = 0.01


# -- workloads ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """A model and the shape of its synthetic batches."""

    key: str
    description: str
    batch: int
    input_shape: tuple[int, ...]  # of one example
    build: Callable[[], torch.nn.Module]


def build_mlp() -> torch.nn.Module:
    from torch import nn

    return nn.Sequential(
        nn.Linear(784, 512), nn.ReLU(),
        nn.Linear(512, 256), nn.ReLU(),
        nn.Linear(256, 10),
    )  # fmt: skip


def build_cnn() -> torch.nn.Module:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 16, 16)
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 8, 8)
        nn.Flatten(),  # (B, 4096)
        nn.Linear(4096, 10),
    )  # fmt: skip


WORKLOADS = {
    "M": Workload("M", "MLP 784-512-256-10, ReLU, batch 128", 128, (784,), build_mlp),
    "C": Workload("C", "CNN 3-32-64 conv/ReLU/maxpool + Linear 4096-10, 32x32x3, batch 64",
                  64, (3, 32, 32), build_cnn),
}  # fmt: skip


def batches(workload: Workload) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`BATCHES` synthetic (inputs, labels) batches of `workload`, cycled by the loop."""
    import torch

    return [
        (torch.randn(workload.batch, *workload.input_shape),
         torch.randint(0, 10, (workload.batch,)))
        for _ in range(BATCHES)
    ]  # fmt: skip


# -- the modes, as seen from the training loop ------------------------------------------


class Tracker:
    """The baseline: logs nothing. Subclasses attach one logging library to the model."""

    def log(self, step: int, loss: float) -> None:
        """Called once per step, after the optimizer step, with the step's loss."""

    def stepped(self) -> None:
        """Called once per step, last."""

    def close(self) -> dict[str, Any]:
        """Called after the timed steps (untimed); returns figures for the report."""
        return {}


class LayerwatchTracker(Tracker):
    """`Run.watch()` with every capture option it offers switched on, and `run.log()`."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        every: int,
        server: str,
        *,
        manual_steps: bool = False,
        sentinel: bool = True,
    ) -> None:
        import layerwatch

        self.run = layerwatch.Run(server, project="bench", name=f"overhead-every{every}")
        self.capture = full_capture_options(self.run.watch)
        self.manual_steps = manual_steps
        off = {} if sentinel else {"sentinel": False}  # the default is on
        self.run.watch(
            model, None if manual_steps else optimizer, every=every, **self.capture, **off
        )

    def stepped(self) -> None:
        if self.manual_steps:
            self.run.step()

    def log(self, step: int, loss: float) -> None:
        self.run.log({"loss": loss})

    def close(self) -> dict[str, Any]:
        flushed = self.run.finish(timeout=300)
        counters = self.run.counters
        return {
            "capture": self.capture,
            "flushed": flushed,
            "sent": counters.sent,
            "dropped": counters.dropped,
            "failed_batches": counters.failed_batches,
            "skipped_captures": getattr(counters, "skipped_captures", 0),
        }


def full_capture_options(watch: Callable[..., object]) -> dict[str, bool]:
    """The boolean capture switches of `watch`'s signature, all True: full capture
    with whatever version of the client is installed."""
    parameters = inspect.signature(watch).parameters
    return {
        name: True
        for name in FULL_CAPTURE
        if name in parameters and isinstance(parameters[name].default, bool)
    }


class WandbTracker(Tracker):
    """`wandb.watch(model, log="all", log_freq=every)` in an offline run, and `wandb.log()`.

    wandb.watch stages its histograms in the current history row (`commit=False`);
    the `wandb.log()` call of each step commits the row, so every captured step
    becomes a row of its own.
    """

    def __init__(self, model: torch.nn.Module, every: int, directory: Path) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project="layerwatch-bench", name=f"overhead-every{every}", dir=str(directory),
            mode="offline", settings=wandb.Settings(silent=True),
        )  # fmt: skip
        self.run.watch(model, log="all", log_freq=every)

    def log(self, step: int, loss: float) -> None:
        self.run.log({"loss": loss})

    def close(self) -> dict[str, Any]:
        self.run.finish()
        return {"version": self.wandb.__version__}


class TensorBoardTracker(Tracker):
    """`SummaryWriter.add_histogram` of every parameter, gradient and leaf module output
    at steps `k % every == 0`, and `add_scalar` of the loss at every step."""

    def __init__(self, model: torch.nn.Module, every: int, directory: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.model = model
        self.every = every
        self.writer = SummaryWriter(str(directory))
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [
            module.register_forward_hook(self._keeper(name))
            for name, module in model.named_modules()
            if next(module.children(), None) is None
        ]

    def _keeper(self, name: str) -> Callable[[torch.nn.Module, object, torch.Tensor], None]:
        outputs = self.outputs

        def keep(module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
            outputs[name] = output

        return keep

    def log(self, step: int, loss: float) -> None:
        writer = self.writer
        writer.add_scalar("loss", loss, step)
        if step % self.every:
            return
        for name, parameter in self.model.named_parameters():
            writer.add_histogram(f"parameters/{name}", parameter, step)
            if parameter.grad is not None:
                writer.add_histogram(f"gradients/{name}", parameter.grad, step)
        for name, output in self.outputs.items():
            writer.add_histogram(f"activations/{name}", output, step)

    def close(self) -> dict[str, Any]:
        for handle in self.handles:
            handle.remove()
        self.writer.close()
        import tensorboard

        return {"version": tensorboard.__version__}


# -- one measurement: the child process --------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Build the workload, attach the mode, warm up, time `args.steps` steps."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    workload = WORKLOADS[args.workload]
    model = workload.build()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    data = batches(workload)
    directory = Path(args.directory)
    tracker: Tracker
    if args.family == "baseline":
        tracker = Tracker()
    elif args.family.startswith("layerwatch"):
        tracker = LayerwatchTracker(model, optimizer, args.every, args.server,
                                    manual_steps=args.family == "layerwatch-step",
                                    sentinel=args.family != "layerwatch-nosentinel")  # fmt: skip
    elif args.family == "wandb":
        tracker = WandbTracker(model, args.every, directory)
    else:
        tracker = TensorBoardTracker(model, args.every, directory)

    def train_step(step: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        x, y = data[step % BATCHES]
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        tracker.log(step, loss.item())
        tracker.stepped()

    for step in range(args.warmup):
        train_step(step)
    seconds = []
    cpu_started = cpu_seconds()
    for step in range(args.warmup, args.warmup + args.steps):
        started = time.perf_counter()
        train_step(step)
        seconds.append(time.perf_counter() - started)
    cpu = cpu_seconds() - cpu_started
    extra = tracker.close()
    blocks = [statistics.fmean(seconds[i : i + BLOCK]) for i in range(0, len(seconds), BLOCK)]
    return {
        "family": args.family,
        "every": args.every,
        "workload": args.workload,
        "warmup": args.warmup,
        "steps": len(seconds),
        "median_ms": 1000 * statistics.median(seconds),
        "mean_ms": 1000 * statistics.fmean(seconds),
        "block_median_ms": 1000 * statistics.median(blocks),
        "cpu_ms": 1000 * cpu / len(seconds),  # the process's CPU time (all threads) per step
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **extra,
    }


def cpu_seconds() -> float:
    """CPU time of this process so far, all its threads, user and system."""
    times = os.times()
    return times.user + times.system


# -- the server, and running children ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def serve(directory: Path, timeout: float = 60.0) -> Iterator[str]:
    """`layerwatch server` in its own process on a fresh SQLite file; yields its URL."""
    port = free_port()
    command = [
        sys.executable, "-m", "layerwatch_server.cli", "server", "--port", str(port),
        "--data-dir", str(directory), "--log-level", "warning",
    ]  # fmt: skip
    log_path = directory / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not ready(url):
            if process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server was not ready in {timeout} s")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class Mode:
    family: str  # "baseline" or one of FAMILIES
    every: int

    @property
    def label(self) -> str:
        return self.family if self.family == "baseline" else f"{self.family}/{self.every}"


BASELINE = Mode("baseline", 1)


class ChildFailed(RuntimeError):
    pass


def run_child(
    mode: Mode, workload: str, args: argparse.Namespace, directory: Path, server: str | None
) -> dict[str, Any]:
    """One measurement in a fresh interpreter; returns its JSON."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{workload}-{mode.family}-", dir=directory))
    command = [
        sys.executable, __file__, "--child", mode.family, str(mode.every), workload,
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed),
        "--directory", str(workdir), "--server", server or "",
    ]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # with torch.set_num_threads(1) in the child
        "MKL_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(workdir),
        "WANDB_CACHE_DIR": str(workdir / "cache"),
        "WANDB_CONFIG_DIR": str(workdir / "config"),
        "WANDB_DATA_DIR": str(workdir / "data"),
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ChildFailed(f"{mode.label} on {workload} exited {done.returncode}: {tail[0]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# -- pairs and the report ----------------------------------------------------------------


@dataclass
class Row:
    """A mode on a workload: its pairs, or why it was not measured."""

    workload: str
    mode: Mode
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    skipped: str | None = None

    @property
    def ratios(self) -> list[float]:
        return [m["block_median_ms"] / b["block_median_ms"] for b, m in self.pairs]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios) if self.pairs else math.nan

    @property
    def cpu_ratio(self) -> float:
        """Median over pairs of the process CPU time per step, mode over baseline."""
        ratios = [m["cpu_ms"] / b["cpu_ms"] for b, m in self.pairs if b.get("cpu_ms")]
        return statistics.median(ratios) if ratios else math.nan

    @property
    def rss(self) -> float:
        """Median peak RSS of the mode's processes, MB."""
        return float(statistics.median(m["peak_rss_mb"] for _, m in self.pairs))

    @property
    def ms(self) -> float:
        return float(statistics.median(m["block_median_ms"] for _, m in self.pairs))

    @property
    def warning(self) -> str:
        """Why the layerwatch figures are not valid: records dropped or left unsent."""
        dropped = sum(m.get("dropped", 0) + m.get("failed_batches", 0) for _, m in self.pairs)
        unsent = sum(not m.get("flushed", True) for _, m in self.pairs)
        skipped = sum(m.get("skipped_captures", 0) for _, m in self.pairs)
        found = [f"{dropped} records dropped"] if dropped else []
        found += [f"{unsent} runs not flushed"] if unsent else []
        found += [f"{skipped} captures skipped"] if skipped else []
        return f"WARNING: {', '.join(found)}" if found else ""


def measure_row(row: Row, args: argparse.Namespace, directory: Path, server: str | None) -> None:
    for pair in range(args.pairs):
        order = [BASELINE, row.mode] if pair % 2 == 0 else [row.mode, BASELINE]
        try:
            found = {m: run_child(m, row.workload, args, directory, server) for m in order}
        except (ChildFailed, subprocess.TimeoutExpired) as error:
            row.skipped = f"failed: {error}"
            print(f"  {row.workload} {row.mode.label}: {row.skipped}", flush=True)
            return
        row.pairs.append((found[BASELINE], found[row.mode]))
    spread = ", ".join(f"{r:.3f}" for r in row.ratios)
    print(f"  {row.workload} {row.mode.label:15} {row.ms:8.2f} ms/step  x {spread}", flush=True)


def verdict(row: Row, rows: list[Row]) -> tuple[str, str]:
    """The target of a layerwatch row and whether it is met; peers have none."""
    if not row.mode.family.startswith("layerwatch"):
        return "-", "-"
    peers = [
        r.ratio for r in rows
        if r.workload == row.workload and r.mode.every == row.mode.every
        and r.mode.family in PEERS and r.pairs
    ]  # fmt: skip
    limit = TARGETS.get(row.mode.every)
    wanted = [f"<= {limit:.2f}x"] if limit is not None else []
    if peers:
        wanted.append("< peers")
    met = (limit is None or row.ratio <= limit) and all(row.ratio < p for p in peers)
    return ", ".join(wanted) or "-", "yes" if met else "no"


def report(rows: list[Row]) -> str:
    table = [["workload", "mode", "every", "ms/step", "vs baseline", "pairs (min-max)",
              "cpu ratio", "peak RSS MB", "target", "met", "note"]]  # fmt: skip
    for workload in dict.fromkeys(r.workload for r in rows):
        baselines = [b for r in rows if r.workload == workload for b, _ in r.pairs]
        if baselines:
            ms = f"{statistics.median(b['block_median_ms'] for b in baselines):.2f}"
            rss = f"{statistics.median(b['peak_rss_mb'] for b in baselines):.0f}"
            table.append([workload, "baseline", "-", ms, "1.00", "-", "1.00", rss, "-", "-", ""])
        for row in (r for r in rows if r.workload == workload):
            if row.skipped or not row.pairs:
                table.append([workload, row.mode.family, str(row.mode.every), "-", "-", "-",
                              "-", "-", "-", "-", row.skipped or "not measured"])  # fmt: skip
                continue
            target, met = verdict(row, rows)
            ratios = row.ratios
            note = row.warning
            if note and met == "yes":  # records lost or captures skipped: not full capture
                met = "no"
            table.append([
                workload, row.mode.family, str(row.mode.every), f"{row.ms:.2f}",
                f"{row.ratio:.3f}", f"{min(ratios):.3f}-{max(ratios):.3f}",
                f"{row.cpu_ratio:.2f}", f"{row.rss:.0f}", target, met, note,
            ])  # fmt: skip
    return markdown(table, lambda i: i in (2, 3, 4, 5, 6, 7))


def installed(family: str) -> bool:
    module = {"layerwatch": "layerwatch", "layerwatch-step": "layerwatch",
              "layerwatch-nosentinel": "layerwatch", "wandb": "wandb",
              "tensorboard": "tensorboard"}[family]  # fmt: skip
    return importlib.util.find_spec(module) is not None


def capture_note(rows: list[Row]) -> str | None:
    for row in rows:
        for _, mode in row.pairs:
            if "capture" in mode:
                switches = ", ".join(f"{k}=True" for k in mode["capture"])
                return f"layerwatch watch() options: {switches or 'none (the defaults)'}"
    return None


# -- command line ------------------------------------------------------------------------


def split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--workloads", default="M,C", help="comma-separated: M (MLP), C (CNN) (default M,C)")
    add("--modes", default=",".join(FAMILIES), help=f"comma-separated of {', '.join(FAMILIES)}")
    add(
        "--every",
        default=f"1,10,{UNCAPTURED}",
        help=f"capture intervals in steps (default 1,10,{UNCAPTURED})",
    )
    add("--pairs", type=int, default=5, help="baseline/mode pairs per row (5)")
    add("--steps", type=int, default=100, help=f"timed steps per process, x{BLOCK} (100)")
    add("--warmup", type=int, default=20, help="untimed steps first (20)")
    add("--seed", type=int, default=0)
    add("--quick", action="store_true", help="a smoke run: 1 pair of 20 steps")
    add("--json", type=Path, help="also write every measurement to this JSON file")
    add("--child", nargs=3, metavar=("FAMILY", "EVERY", "WORKLOAD"), help=argparse.SUPPRESS)
    add("--server", default="", help=argparse.SUPPRESS)
    add("--directory", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.steps, args.warmup = 1, 2 * BLOCK, BLOCK
    args.steps = max(BLOCK, math.ceil(args.steps / BLOCK) * BLOCK)
    if args.child:
        family, every, workload = args.child
        args.family, args.every, args.workload = family, int(every), workload
        return args
    for name, values, allowed in (
        ("--workloads", split(args.workloads), WORKLOADS),
        ("--modes", split(args.modes), FAMILIES),
    ):
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            parser.error(f"{name}: unknown {unknown}; choose from {', '.join(allowed)}")
    args.workloads, args.modes = split(args.workloads), split(args.modes)
    try:
        args.every = [int(e) for e in split(args.every)]
    except ValueError:
        parser.error("--every takes positive integers")
    if not args.every or min(args.every) < 1 or args.pairs < 1:
        parser.error("--every and --pairs take positive integers")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)), flush=True)
        return 0
    started = time.perf_counter()
    print(
        f"{args.pairs} pairs per mode, {args.steps} timed steps per process after "
        f"{args.warmup} warm-up steps; 1 torch thread.\nMachine: {machine()}"
    )
    for key in args.workloads:
        print(f"  {key}: {WORKLOADS[key].description}, SGD")
    rows = [
        Row(workload, Mode(family, every))
        for workload in args.workloads
        for every in args.every
        for family in args.modes
    ]
    for row in rows:
        if not installed(row.mode.family):
            row.skipped = "skipped (not installed)"
    with tempfile.TemporaryDirectory(prefix="layerwatch-overhead-") as tmp:
        directory = Path(tmp)
        wants_server = any(r.mode.family.startswith("layerwatch") and not r.skipped for r in rows)
        with serve(directory) if wants_server else contextlib.nullcontext("") as server:
            for row in rows:
                if not row.skipped:
                    measure_row(row, args, directory, server)
    print()
    print(report(rows))
    note = capture_note(rows)
    if note:
        print(f"\n{note}")
    print(
        f"\n{time.perf_counter() - started:.0f} s in all; load {os.getloadavg()[0]:.1f} at the end."
    )
    if args.json:
        found = [
            {"workload": r.workload, "mode": asdict(r.mode), "skipped": r.skipped,
             "ratio": r.ratio if r.pairs else None, "pairs": r.pairs}
            for r in rows
        ]  # fmt: skip
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "rows": found}, indent=1, default=str))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
