"""Training throughput of one job on 1 process against 2 (torchrun), measured in one run.

The same SPPO job on the fixture (fixed seed, same global batch) runs with n_devices 1 and 2, in
alternating rounds so both see the same machine load, as a LoRA adapter (replicated, data-parallel)
and fully fine-tuned (`--modes full`: the policy sharded with FSDP2, lr 3e-5). Every process gets
`--threads` threads, so 2 processes use twice the cores of 1. A step's time is rank 0's rollout +
update time (it includes waiting for the other rank); the first step of each run is left out
(allocator warm-up, critic initialisation), and so is the start-up of torchrun and the ranks, which is
reported on its own. On a shared 2-core machine the ratio may well stay below 2, or below 1: it is
written down as measured.

    python benchmarks/multi_device.py --steps 4 --rounds 1            # CPU, gloo, both modes
    python benchmarks/multi_device.py --device cuda                   # on a host with 2 GPUs (nccl)

Writes benchmarks/results/multi_device.json (CPU) or benchmarks/results/gpu/multi_device.json (CUDA).
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


MODES: dict[str, dict[str, Any]] = {"lora": {}, "full": {"use_lora": False, "learning_rate": 3e-5}}


def run(n_devices: int, mode: str, *, steps: int, samples: int, device: str, seed: int) -> dict[str, Any]:
    """One run of `steps` steps; per-step timings and rewards from rank 0's metrics."""
    from worker.engine.config import RunConfig
    from worker.engine.fixtures import FIXTURE_GRADER, ensure_fixture
    from worker.engine.run import run_training

    fixture = ensure_fixture()
    with tempfile.TemporaryDirectory() as output_dir:
        config = RunConfig.from_dict(
            {
                "model": str(fixture.model_dir), "train_file": str(fixture.train_file),
                "grader": FIXTURE_GRADER, "output_dir": output_dir, "seed": seed, "device": device,
                "batch_size": samples, "minibatch_size": samples // 2, "max_steps": steps + 1,
                "checkpoint_interval": steps + 1, "n_devices": n_devices, **MODES[mode],
            }
        )  # fmt: skip
        started = time.perf_counter()
        run_training(config)
        wall_s = time.perf_counter() - started
        lines = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    timed = lines[1:]  # the first step warms up
    step_s = [line["perf/rollout_s"] + line["perf/train_s"] for line in timed]
    return {
        "n_devices": n_devices,
        "samples_per_s": samples * len(timed) / sum(step_s),
        "step_s": step_s,
        "peak_memory_mb_rank0": max(line["perf/peak_memory_mb"] for line in lines),
        "startup_and_first_step_s": wall_s - sum(step_s),
        "reward_mean": [line["rollout/reward_mean"] for line in lines],
        "policy_loss": [line["train/policy_loss"] for line in lines],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run (after one warm-up step)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating 1- and 2-process runs")
    parser.add_argument("--samples", type=int, default=32, help="samples (SPPO: prompts) per step")
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, one GPU per rank)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="lora,full", help="lora (replicated), full (sharded) or both")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the ranks read it when torch starts
    import torch

    torch.set_num_threads(args.threads)
    modes = args.modes.split(",")
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {mode: {1: [], 2: []} for mode in modes}
    for _ in range(args.rounds):
        for mode in modes:
            for n_devices in (1, 2):
                options = {"steps": args.steps, "samples": args.samples, "seed": args.seed}
                found = run(n_devices, mode, device=args.device, **options)
                runs[mode][n_devices].append(found)
                print(f"{mode}, n_devices {n_devices}: {found['samples_per_s']:.1f} samples/s", flush=True)
    summary = {}
    for mode, by_count in runs.items():
        rate = {n: statistics.median(r["samples_per_s"] for r in found) for n, found in by_count.items()}
        summary[mode] = {
            "samples_per_s": {str(n): value for n, value in rate.items()},
            "ratio_2_over_1": rate[2] / rate[1],
            "runs": {str(n): found for n, found in by_count.items()},
        }
    result = {
        "command": "python benchmarks/multi_device.py "
        f"--steps {args.steps} --rounds {args.rounds} --samples {args.samples} --threads {args.threads} "
        f"--device {args.device} --modes {args.modes}",
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_end": os.getloadavg()[0],
                    "python": platform.python_version(), "torch": torch.__version__},
        "modes": summary,
    }  # fmt: skip
    target = RESULTS / ("gpu" if args.device.startswith("cuda") else "") / "multi_device.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n")
    for mode, found in summary.items():
        print(f"{mode}: 2 processes / 1 process: {found['ratio_2_over_1']:.2f}x samples/s")
    print(f"written to {target}")


if __name__ == "__main__":
    main()
