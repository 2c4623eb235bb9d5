"""Client memory over a long run: the training process's RSS, sampled every 1,000 steps.

One process per mode trains workload M (the MLP of bench/overhead.py) on CPU with one
torch thread, in the loop users write, with full capture at the given intervals,
streaming to a real server on a throw-away SQLite file, and reports its RSS every
`--sample` steps, its peak RSS, and the growth over the second half of the run
(flat means no leak: a leak grows linearly). The bar: added peak RSS at most two
copies of the watched parameters (the weight-change snapshots) plus 64 MB.

    python bench/memory.py                      # 20,000 steps, every 1 and 10: ~6 minutes
    python bench/memory.py --steps 4000 --every 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from overhead import BATCHES, LR, WORKLOADS, batches, serve
from report import machine, markdown

MB = 2**20


def rss_mb() -> float:
    """Resident set size of this process now, MB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / MB


def measure(every: int, steps: int, sample: int, server: str) -> dict[str, Any]:
    """Train M for `steps` steps (every=0: no layerwatch); RSS every `sample` steps."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.manual_seed(0)
    workload = WORKLOADS["M"]
    model = workload.build()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    data = batches(workload)
    run = None
    if every:
        import layerwatch

        run = layerwatch.Run(server, project="bench", name=f"memory-every{every}")
        run.watch(model, optimizer, every=every)
    param_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / MB
    samples = []
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        x, y = data[step % BATCHES]
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if run is not None:
            run.log({"loss": loss.item()})
        if step % sample == 0:
            samples.append((step, round(rss_mb(), 1)))
    extra: dict[str, Any] = {}
    if run is not None:
        run.finish(timeout=300)
        counters = run.counters
        extra = {"dropped": counters.dropped, "skipped_captures": counters.skipped_captures}
    return {
        "every": every,
        "steps": steps,
        "samples": samples,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "param_mb": param_mb,
        **extra,
    }


def growth(samples: list[list[float]]) -> float:
    """RSS at the end minus RSS at the middle of the run, MB."""
    middle = samples[len(samples) // 2][1]
    return samples[-1][1] - middle


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--sample", type=int, default=1_000, help="steps between samples")
    parser.add_argument("--every", default="1,10", help="capture intervals (default 1,10)")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        every, steps = args.child
        print(json.dumps(measure(every, steps, args.sample, args.server)), flush=True)
        return 0
    started = time.perf_counter()
    print(f"{args.steps} steps of M per process, RSS every {args.sample}.\nMachine: {machine()}")
    everys = [0] + [int(e) for e in args.every.split(",") if e.strip()]
    results = []
    with tempfile.TemporaryDirectory(prefix="layerwatch-memory-") as tmp, serve(Path(tmp)) as url:
        for every in everys:
            command = [sys.executable, __file__, "--child", str(every), str(args.steps),
                       "--sample", str(args.sample), "--server", url]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, timeout=7200)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode or not lines:
                print(f"every={every} failed: {(done.stderr or done.stdout)[-500:]}")
                continue
            results.append(json.loads(lines[-1]))
            result = results[-1]
            series = " ".join(f"{mb:.0f}" for _, mb in result["samples"])
            print(f"  every={every or '-'}: RSS MB every {args.sample} steps: {series}", flush=True)
    if not results or results[0]["every"] != 0:
        return 1
    base = results[0]
    table = [["mode", "peak RSS MB", "added MB", "bar MB", "met", "growth, 2nd half MB",
              "dropped", "skipped captures"]]  # fmt: skip
    table.append(["baseline", f"{base['peak_mb']:.0f}", "-", "-", "-",
                  f"{growth(base['samples']):+.1f}", "-", "-"])  # fmt: skip
    for result in results[1:]:
        added = result["peak_mb"] - base["peak_mb"]
        bar = 2 * result["param_mb"] + 64
        table.append([
            f"layerwatch every={result['every']}", f"{result['peak_mb']:.0f}", f"{added:.0f}",
            f"{bar:.0f}", "yes" if added <= bar else "no", f"{growth(result['samples']):+.1f}",
            str(result.get("dropped", "-")), str(result.get("skipped_captures", "-")),
        ])  # fmt: skip
    print()
    print(markdown(table, lambda i: i >= 1))
    print(f"\n{time.perf_counter() - started:.0f} s in all.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
