"""Python graders through grading.sandbox.PythonGraderPool: graded samples/s and a fresh pool's start-up.

  throughput  an exact-match grader (`return 1.0 if sample["output_text"] == item["answer"] else 0.0`)
              in a warm pool of --pool-size sandboxes, --batches batches of --batch-size samples each
              (one `run` per batch, as a training step grades); the median batch's samples/s is the figure
              (target: >= 200 samples/s with 2 sandboxes on a 2-core machine)
  startup     --fresh-pools times: a new pool (bubblewrap, interpreter, zygote) and its first graded sample,
              i.e. what the first call of a new grader costs

Every call is a separate forked process in a sandbox (seccomp, rlimits); nothing is cached between calls.
The machine may be shared: the load average is recorded at the start and the end of the run.

    python -m benchmarks.python_graders
    python -m benchmarks.python_graders --unsandboxed      # the same zygote without bubblewrap

Writes benchmarks/results/python_graders.json (one entry per mode: sandboxed / unsandboxed).
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from grading.sandbox import PythonGraderPool

RESULTS = Path(__file__).resolve().parent / "results" / "python_graders.json"
SOURCE = """
def grade(sample, item):
    return 1.0 if sample["output_text"] == item["answer"] else 0.0
"""


def batch(size: int, offset: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Half right, half wrong: the rewards are checked, so a broken pool cannot look fast."""
    return [
        ({"output_text": str((offset + i) % 2), "output_json": None}, {"answer": "1"}) for i in range(size)
    ]


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    with PythonGraderPool(SOURCE, size=args.pool_size, unsandboxed=args.unsandboxed) as pool:
        pool.run(batch(args.batch_size, 0))  # warm-up: page cache, first forks
        rates = []
        for index in range(args.batches):
            calls = batch(args.batch_size, index)
            started = time.perf_counter()
            results = pool.run(calls)
            rates.append(len(calls) / (time.perf_counter() - started))
            assert [r.reward for r in results] == [float(s["output_text"] == "1") for s, _ in calls], results
    return {
        "pool_size": args.pool_size,
        "batch_size": args.batch_size,
        "batches": args.batches,
        "samples_per_s_median": round(statistics.median(rates), 1),
        "samples_per_s_min": round(min(rates), 1),
        "samples_per_s_max": round(max(rates), 1),
        "ms_per_sample_median": round(1000 / statistics.median(rates), 3),
    }


def startup(args: argparse.Namespace) -> dict[str, Any]:
    seconds = []
    for _ in range(args.fresh_pools):
        started = time.perf_counter()
        with PythonGraderPool(SOURCE, size=1, unsandboxed=args.unsandboxed) as pool:
            [result] = pool.run(batch(1, 1))
            seconds.append(time.perf_counter() - started)
        assert result.reward == 1.0, result
    return {
        "fresh_pools": args.fresh_pools,
        "first_sample_s_median": round(statistics.median(seconds), 4),
        "first_sample_s_max": round(max(seconds), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--fresh-pools", type=int, default=5)
    parser.add_argument("--unsandboxed", action="store_true", help="the zygote without bubblewrap")
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    figures = {"throughput": throughput(args), "startup": startup(args)}
    mode = "unsandboxed" if args.unsandboxed else "sandboxed"
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[mode] = {
        **figures,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_at_start": load_at_start,
            "load_avg_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results[mode], indent=2))
    print(f"wrote {RESULTS} [{mode}]")


if __name__ == "__main__":
    main()
