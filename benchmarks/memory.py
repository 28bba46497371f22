"""Peak tensor memory of one training step, measured on a CPU over a matrix that separates the costs.

    python benchmarks/memory.py                # the mid-size model (Qwen2.5-0.5B's shape): ~40 min, ~10 GB
    python benchmarks/memory.py --tiny --out /tmp/x   # the smoke run `make test` does: seconds per config
    python benchmarks/memory.py --fit-only     # refit and rewrite the report from the saved measurements

Each configuration runs in a fresh process (memory_step.py): one warm-up step, then one step whose live
tensor bytes are tracked (tensor_memory.py: the CPU analogue of torch.cuda.max_memory_allocated), the
rollout's peak and the update's apart, with VmHWM as a cross-check. The matrix varies one thing at a
time: dtype, gradient checkpointing, LoRA or full fine-tuning, the critic (none, separate, shared_lora,
a separate one of a quarter of the layers), and the tokens of the step (samples x response length), so
per-token cost is a slope and per-parameter cost an intercept (memory_fit.py). Results go to
benchmarks/results/memory/ (`cpu.json` or `cpu-tiny.json`, and a plot of peak against tokens).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `benchmarks` and the engine from this checkout
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "memory"
SAMPLES = 8  # GRPO's group of 8: one prompt; SPPO and PPO: 8 prompts
SHORT, LONG, LONGEST = 16, 48, 96  # response tokens: the token slope's points


def setup(algorithm: str, dtype: str, checkpointing: bool, tokens: int, **extra: Any) -> dict[str, Any]:
    layers = f"-{extra['critic_layers']}layers" if "critic_layers" in extra else ""
    critic = str(extra.get("critic", "none")) + layers
    parts = [algorithm, dtype, "ckpt" if checkpointing else "no-ckpt",
             "lora" if extra.get("use_lora", True) else "full", critic, f"r{tokens}"]  # fmt: skip
    return {"name": "/".join(parts), "algorithm": algorithm, "samples": SAMPLES, "dtype": dtype,
            "gradient_checkpointing": checkpointing, "max_response_tokens": tokens, **extra}  # fmt: skip


def matrix(tiny: bool) -> list[dict[str, Any]]:
    """The configurations, most informative first (a run cut short keeps the ones that matter)."""
    if tiny:
        return [setup("grpo", "float32", False, SHORT), setup("grpo", "float32", False, LONG),
                setup("grpo", "bfloat16", False, SHORT),
                setup("grpo", "float32", False, SHORT, use_lora=False)]  # fmt: skip
    return [
        setup("grpo", "float32", False, SHORT),
        setup("grpo", "float32", False, LONG),
        setup("grpo", "bfloat16", True, SHORT),
        setup("grpo", "bfloat16", True, LONG),
        setup("grpo", "bfloat16", True, SHORT, use_lora=False),
        setup("sppo", "bfloat16", True, SHORT, critic="separate"),
        setup("sppo", "bfloat16", True, SHORT, critic="shared_lora"),
        setup("ppo", "bfloat16", True, SHORT, critic="separate"),
        setup("grpo", "bfloat16", False, SHORT),
        setup("grpo", "bfloat16", False, LONG),
        setup("sppo", "bfloat16", True, SHORT, critic="separate", critic_layers=6),
        setup("ppo", "bfloat16", True, SHORT, critic="shared_lora"),
        setup("grpo", "float32", True, SHORT),
        setup("grpo", "float32", True, LONG),
        setup("grpo", "float32", True, SHORT, use_lora=False),
        setup("ppo", "bfloat16", True, LONG, critic="separate"),
        setup("grpo", "float32", False, LONGEST),  # linearity: a third point on the no-checkpointing slope
    ]


def run_one(model_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """`config` measured by a fresh process (so no earlier run's tensors or caches are counted)."""
    command = [sys.executable, str(Path(__file__)), "--child", json.dumps(config), "--model-dir",
               str(model_dir)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ}, check=False)
    if done.returncode != 0:
        return {**config, "error": done.stderr[-2000:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run_matrix(model_dir: Path, configs: list[dict[str, Any]], report: Path, tiny: bool) -> dict[str, Any]:
    from benchmarks.gpu_model import describe

    result: dict[str, Any] = {"tiny": tiny, "model": describe(model_dir), "runs": []}
    if report.exists():  # a run cut short goes on where it stopped
        result["runs"] = [run for run in json.loads(report.read_text())["runs"] if "error" not in run]
    done = {run["name"] for run in result["runs"]}
    for config in (config for config in configs if config["name"] not in done):
        print(f"{time.strftime('%H:%M:%S')} {config['name']}", flush=True)
        result["runs"].append(run_one(model_dir, config))
        # written as it grows: a long run cut short keeps what it measured, and goes on from there
        report.write_text(json.dumps(result, indent=1))
    return result


def main() -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--tiny", action="store_true", help="the 2-layer width-64 model, four configs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--model-dir", type=Path, help="a model built by gpu_model.build_model (else built)")
    parser.add_argument("--fit-only", action="store_true", help="refit the saved measurements")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one configuration, in its own process
    args = parser.parse_args()
    if args.child:
        from benchmarks.memory_step import measure

        print(json.dumps(measure(args.model_dir, json.loads(args.child))))
        return 0
    from benchmarks.memory_fit import fit, plot

    args.out.mkdir(parents=True, exist_ok=True)
    report = args.out / ("cpu-tiny.json" if args.tiny else "cpu.json")
    if args.fit_only:
        result = json.loads(report.read_text())
    else:
        with tempfile.TemporaryDirectory() as work:
            model_dir = args.model_dir or build(Path(work) / "model", args.tiny)
            result = run_matrix(model_dir, matrix(args.tiny), report, args.tiny)
    result["fit"] = fit(result["runs"], result["model"])
    report.write_text(json.dumps(result, indent=1))
    plot(result["runs"], args.out / report.with_suffix(".png").name)
    print(json.dumps(result["fit"]["check"], indent=1))
    return 0 if not any("error" in run for run in result["runs"]) else 1


def build(target: Path, tiny: bool) -> Path:
    import torch

    from benchmarks.gpu_model import build_model

    return build_model(target, tiny=tiny, device=torch.device("cpu"))


if __name__ == "__main__":
    sys.exit(main())
