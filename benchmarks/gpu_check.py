"""The engine on one GPU in one command, sized for one 8-minute lease, model build included; no network.

    python benchmarks/gpu_check.py                                  # CUDA: the 0.5B-shaped model in bf16
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/x # the smoke run `make test` does

Builds Qwen2.5-0.5B's shape with random weights and the fixture's tokenizer (gpu_model.py; EOS never
sampled, so every response is full length), then measures (gpu_checks.py):
- rollout tokens/s of the engine against bare `model.generate` on the same prompts and max tokens;
- update tokens/s against a bare forward+backward+AdamW over the same tokens, and model-FLOPs
  utilisation of both (FORMULAS);
- peak memory per algorithm and critic kind (sppo, ppo: separate, shared_lora; grpo: none), CUDA's
  max_memory_allocated (on a CPU the process's resident peak, which includes earlier runs' leftovers);
- exact resume: 4 steps straight against 2 + pause + resume + 2, the adapters compared bitwise;
- the OOM fallback, forced with torch.cuda.set_per_process_memory_fraction (skipped on a CPU).
A failing check is recorded under `errors` and the others still run; `--max-seconds` stops the whole run
(SIGALRM) and writes what was measured. The JSON goes to benchmarks/results/gpu/<device name>.json (CUDA)
or to --out (default for a CPU: a temporary directory).
"""

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `benchmarks` and the engine from this checkout
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "gpu"
FORMULAS = {
    "rollout_flops_per_token": "2 x params (forward only; prefill and attention scores not counted)",
    "update_flops_per_token": "4 x params + 2 x trainable params of the policy (forward, backward to "
    "activations, weight gradients of what trains: 6 x params when everything trains); recompute and the "
    "critic's work not counted",
    "mfu": "flops_per_token x tokens/s / the device's dense bf16 peak (null when the device is not listed)",
    "update_tokens": "non-padding tokens of the step x ppo_epochs; the engine's update is everything of a "
    "step after the rollout (critic fit, advantages, PPO epochs), timed by perf/train_s",
    "rollout_tokens": "generated positions (rows x response width)",
}


OTHER_CONFIGS = (("sppo", "shared_lora"), ("grpo", None), ("ppo", "separate"), ("ppo", "shared_lora"))
"""Algorithm and critic kind of the peak-memory runs after the main one (sppo, separate critic)."""


class BudgetExceeded(BaseException):
    """--max-seconds ran out. Not an Exception: no `except Exception` on the way up may swallow it."""


class Report:
    """The JSON being assembled; each check runs through `run`, which times it and keeps its error."""

    def __init__(self, budget_s: float) -> None:
        self.started = time.perf_counter()
        self.data: dict[str, Any] = {"budget_s": budget_s, "seconds": {}, "errors": {}, "algorithms": {}}

    def run(self, name: str, check: Callable[[], dict[str, Any]], under: str | None = None) -> None:
        started = time.perf_counter()
        target = self.data[under] if under else self.data
        try:
            target[name] = check()
        except BudgetExceeded:
            self.data["errors"][name] = "stopped by --max-seconds"
            raise
        except Exception as exc:  # one failed check must not cost the lease the others' numbers
            self.data["errors"][name] = f"{type(exc).__name__}: {exc}"
        finally:
            self.data["seconds"][name] = round(time.perf_counter() - started, 1)
        print(f"[{time.perf_counter() - self.started:6.1f}s] {name}: {target.get(name)}", flush=True)

    def write(self, path: Path) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.data, indent=2) + "\n")


def device_info(device: "torch.device") -> dict[str, Any]:
    import torch

    from benchmarks.gpu_model import peak_flops

    cuda = device.type == "cuda"
    return {
        "type": device.type,
        "name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "peak_bf16_flops": peak_flops(device),
        "total_memory_mb": torch.cuda.get_device_properties(device).total_memory / 2**20 if cuda else None,
        "memory_measure": "torch.cuda.max_memory_allocated" if cuda else "process resident peak (VmHWM)",
    }


def checks(report: Report, device: "torch.device", tiny: bool, work: Path) -> None:
    """Every check in order of importance, so a budget that runs out drops the least important."""
    from benchmarks import gpu_checks as c
    from benchmarks.gpu_model import build_model, describe

    workload = c.TINY if tiny else c.MID
    report.data["workload"] = vars(workload)
    model_dir = work / "model"
    report.run("model", lambda: {**describe(build_model(model_dir, tiny=tiny, device=device)), "tiny": tiny})

    def throughput() -> dict[str, Any]:
        config = c.run_config(model_dir, work / "sppo", device, "sppo", workload.samples,
                              max_response_tokens=workload.max_response_tokens)  # fmt: skip
        trainer, found = c.measure_config(config, workload.steps)
        report.data["precision"] = {k: str(v) for k, v in vars(trainer.precision).items()}
        rollouts = []

        def rollout() -> dict[str, Any]:
            result, last = c.rollout_vs_bare(trainer, workload.steps)
            rollouts.append(last)
            return result

        report.run("rollout", rollout)
        if rollouts:  # the bare update trains on the tokens the engine sampled last
            update_rate = found["update_tokens_per_s"]
            report.run("update", lambda: c.bare_update(trainer, rollouts[0], workload.steps, update_rate))
        return found

    report.run("sppo/separate", throughput, under="algorithms")
    report.run("resume", lambda: c.exact_resume(model_dir, device, workload))
    report.run("oom_retry", lambda: c.forced_oom(model_dir, device, workload))
    for algorithm, critic in OTHER_CONFIGS:
        overrides = {"critic": critic} if critic else {}
        config = partial(c.run_config, model_dir, work / algorithm, device, algorithm, workload.samples,
                         max_response_tokens=workload.max_response_tokens, **overrides)  # fmt: skip
        report.run(f"{algorithm}/{critic or 'none'}", partial(c.config_memory, config), under="algorithms")


def _stop(signum: int, frame: FrameType | None) -> None:
    raise BudgetExceeded


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (the GPU check) or cpu (smoke)")
    parser.add_argument(
        "--tiny", action="store_true", help="a 2-layer model and small steps (seconds on a CPU)"
    )
    parser.add_argument(
        "--out", type=Path, help="directory of the JSON (CUDA default benchmarks/results/gpu)"
    )
    parser.add_argument(
        "--max-seconds", type=int, default=480, help="stop everything after this many seconds"
    )
    args = parser.parse_args()
    if args.device.startswith("cuda"):  # cuBLAS reads it when CUDA starts: deterministic GEMMs for resume
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = args.out or (RESULTS if device.type == "cuda" else Path(tempfile.mkdtemp(prefix="gpu-check-")))
    path = out / f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}{'-tiny' if args.tiny else ''}.json"
    report = Report(args.max_seconds)
    report.data.update(command=" ".join(sys.argv), torch=torch.__version__, formulas=FORMULAS)
    print(f"time budget: {args.max_seconds} s (--max-seconds)", flush=True)
    signal.signal(signal.SIGALRM, _stop)
    signal.alarm(args.max_seconds)
    try:
        report.data["device"] = device_info(device)
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
            checks(report, device, args.tiny, Path(work))
    except BudgetExceeded:
        report.data["budget_exceeded"] = True
    finally:
        signal.alarm(0)
    report.write(path)
    print(f"{report.data['elapsed_s']} s of {args.max_seconds}; written to {path}")
    return 1 if report.data["errors"] or report.data.get("budget_exceeded") else 0


if __name__ == "__main__":
    sys.exit(main())
