"""The non-finite sentinel's cost, measured in one process: blocks of steps with it on
and off, alternating.

Separate processes (``bench/overhead.py``'s ``layerwatch-nosentinel`` mode) spread
by more than the few per cent the sentinel may cost on this machine; within one
process the two arms share the allocator, the caches and every slow spell. One
`layerwatch.Run` watches workload M or C (as in ``bench/overhead.py``, the users'
loop, optimizer passed, a real server on a fresh SQLite file); between blocks the
watch's sentinel is detached and attached again, which leaves the hooks and every
other cost in place. The figure is the median block time with the sentinel over
the median without.

    python bench/sentinel.py                          # M, every 10 and 10**9
    python bench/sentinel.py --workloads M,C --blocks 25 --block-steps 50

It reports and exits 0; it never fails on a missed target. See bench/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from overhead import BATCHES, LR, WORKLOADS, batches, serve, split
from report import machine, markdown

NEVER = 10**9  # an interval no run reaches: no step is captured


def measure(url: str, workload_key: str, every: int, args: argparse.Namespace) -> list[str]:
    """One row: the median block time with and without the sentinel, and their ratio."""
    import torch
    import torch.nn.functional as F

    import layerwatch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    workload = WORKLOADS[workload_key]
    model = workload.build()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    data = batches(workload)
    on: list[float] = []
    off: list[float] = []
    with layerwatch.Run(url, project="bench", name=f"sentinel-{workload_key}-{every}") as run:
        watch = run.watch(model, optimizer, every=every)
        sentinel = watch._nonfinite.sentinel
        step = 0

        def block(steps: int) -> float:
            nonlocal step
            started = time.perf_counter()
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                x, y = data[step % BATCHES]
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                run.log({"loss": loss.item()})
                step += 1
            return (time.perf_counter() - started) / steps

        block(args.warmup)
        for i in range(args.blocks):
            # ABBA: neither arm always goes first
            for arm in ("on", "off") if i % 2 == 0 else ("off", "on"):
                watch._nonfinite.sentinel = sentinel if arm == "on" else None
                (on if arm == "on" else off).append(block(args.block_steps))
        watch._nonfinite.sentinel = sentinel
        run.flush(30)
    with_ms, without_ms = 1000 * statistics.median(on), 1000 * statistics.median(off)
    label = "10^9 (none)" if every == NEVER else str(every)
    return [workload_key, label, f"{with_ms:.3f}", f"{without_ms:.3f}",
            f"{with_ms / without_ms:.3f}", f"{1000 * (with_ms - without_ms):.0f}"]  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--workloads", type=split, default=["M"], help="comma-separated: M, C")
    add(
        "--every",
        type=lambda v: [int(x) for x in split(v)],
        default=[NEVER, 10],
        help=f"comma-separated capture intervals (default {NEVER},10)",
    )
    add("--blocks", type=int, default=20, help="blocks per arm")
    add("--block-steps", type=int, default=50, help="steps per block")
    add("--warmup", type=int, default=50, help="untimed steps first")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as directory, serve(Path(directory)) as url:
        for workload in args.workloads:
            for every in args.every:
                rows.append(measure(url, workload, every, args))
                print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
    print(machine())
    header = ["workload", "every", "ms/step, sentinel on", "off", "on / off", "µs/step"]
    print(markdown([header, *rows], right=lambda i: i >= 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
