"""Our engine's GRPO against TRL's `GRPOTrainer` on the same setting, samples/s measured in one run.

Both train the shipped `sppo-tiny` fixture on its train prompts with the same RunConfig's values: LoRA
r16/alpha32 on all linear layers (peft config from `worker.engine.policy.lora_config`), the fixture's
learning rate and temperature (`sppo_defaults.json`), AdamW with its weight decay, constant schedule,
gradient clipping 1.0, clip epsilon 0.2, no KL (beta 0), 8 prompts x 8 generations = 64 samples per
step, at most 32 new tokens, one pass over the step's samples in minibatches of `--minibatch-size`
(TRL: per_device_train_batch_size, steps_per_generation = 64 / minibatch, no gradient accumulation),
token-mean loss over the minibatch (TRL's "dapo", equal without accumulation), group-std-scaled
advantages, and our grader as TRL's reward function. Each measurement runs in its own single-threaded
process, the engines alternate in rounds (order flipped every round) so both see the same machine
load, and time is CPU-seconds after one warm-up step; only ratios are meant to be read.

TRL lives in its own venv so the project's pins stay untouched (same torch as `make install`):

    python3 -m venv .venv-trl && .venv-trl/bin/pip install torch==2.13.0
    .venv-trl/bin/pip install -e . trl
    .venv-trl/bin/python benchmarks/trl_grpo.py --rounds 3 --steps 4

Without trl it prints why and exits 0. Writes benchmarks/results/trl_grpo.json.
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "trl_grpo.json"
PROMPTS_PER_STEP = 8
GROUP_SIZE = 8
SAMPLES_PER_STEP = PROMPTS_PER_STEP * GROUP_SIZE
MAX_NEW_TOKENS = 32
ENGINES = ("ours", "trl")
TRL_GRADIENT_CHECKPOINTING = "trl_gc"
VERSIONED = ("torch", "transformers", "peft", "trl", "accelerate")


def run_config(output_dir: str, minibatch_size: int) -> Any:
    """Our GRPO run; its resolved fields (fixture defaults included) also configure TRL."""
    from worker.engine.config import RunConfig
    from worker.engine.fixtures import FIXTURE_GRADER, ensure_fixture

    fixture = ensure_fixture()
    return RunConfig.from_dict(
        {
            "model": str(fixture.model_dir),
            "train_file": str(fixture.train_file),
            "grader": FIXTURE_GRADER,
            "output_dir": output_dir,
            "seed": 0,
            "device": "cpu",
            "algorithm": "grpo",
            "group_size": GROUP_SIZE,
            "batch_size": PROMPTS_PER_STEP,
            "ppo_epochs": 1,
            "minibatch_size": minibatch_size,
            "kl_coef": 0.0,
            "max_response_tokens": MAX_NEW_TOKENS,
        }
    )


def ours(steps: int, minibatch_size: int) -> dict[str, Any]:
    """One measurement of our engine in this process."""
    from worker.engine.callbacks import TrainerCallbacks
    from worker.engine.trainer import Trainer

    with tempfile.TemporaryDirectory() as output_dir:
        trainer = Trainer(run_config(output_dir, minibatch_size), TrainerCallbacks())
        trainer.train_step()  # warm-up: allocator, first-call overheads
        lengths = []
        started = time.process_time()  # CPU-seconds of this one-thread process: robust to other load
        for _ in range(steps):
            lengths.append(trainer.train_step()["rollout/response_length_mean"])
        cpu_s = time.process_time() - started
    return {"samples_per_s": steps * SAMPLES_PER_STEP / cpu_s, "cpu_s": cpu_s, "response_length": lengths}


def trl(steps: int, minibatch_size: int, gradient_checkpointing: bool) -> dict[str, Any]:
    """One measurement of TRL's GRPOTrainer in this process, on our config's values."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from worker.engine.data import load_items
    from worker.engine.graders import build_grader
    from worker.engine.policy import load_base_model, load_tokenizer, lora_config

    updates_per_step = SAMPLES_PER_STEP // minibatch_size  # TRL counts optimizer steps, we count rollouts

    class StepClock(TrainerCallback):
        """CPU-seconds from the end of the warm-up rollout's updates to the end of the last step."""

        def __init__(self) -> None:
            self.started = self.ended = 0.0
            self.response_length: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == updates_per_step:
                self.started = time.process_time()
            self.ended = time.process_time()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "completions/mean_length" in logs and state.global_step > updates_per_step:
                self.response_length.append(logs["completions/mean_length"])

    with tempfile.TemporaryDirectory() as output_dir:
        config = run_config(output_dir, minibatch_size)
        grader = build_grader(config.grader)

        def reward(completions: list[list[dict[str, str]]], answer: list[str], **_: Any) -> list[float]:
            calls = [({"answer": a}, c[0]["content"]) for c, a in zip(completions, answer, strict=True)]
            return [result.reward for result in grader.grade(calls)]

        items = load_items(config.train_file)
        dataset = Dataset.from_list(
            [{"prompt": item["messages"], "answer": item["answer"]} for item in items]
        )
        args = GRPOConfig(
            output_dir=output_dir,
            use_cpu=True,
            bf16=False,  # GRPOConfig defaults to bf16; ours trains in float32
            gradient_checkpointing=gradient_checkpointing,  # GRPOConfig defaults to True; ours has none
            seed=config.seed,
            max_steps=(steps + 1) * updates_per_step,
            per_device_train_batch_size=minibatch_size,
            gradient_accumulation_steps=1,
            steps_per_generation=updates_per_step,
            num_iterations=config.ppo_epochs,
            num_generations=config.samples_per_prompt,
            max_completion_length=config.max_response_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=0,
            beta=config.kl_coef,
            epsilon=config.clip_epsilon,
            scale_rewards="group" if config.grpo_scale_by_std else "none",
            loss_type="dapo",
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            max_grad_norm=config.max_grad_norm,
            optim="adamw_torch",
            lr_scheduler_type="constant",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        clock = StepClock()
        trainer = GRPOTrainer(
            model=load_base_model(config.model, torch.device("cpu")),
            reward_funcs=reward,
            args=args,
            train_dataset=dataset,
            processing_class=load_tokenizer(config.model),
            peft_config=lora_config(config),
            callbacks=[clock],
        )
        trainer.train()
    cpu_s = clock.ended - clock.started
    return {
        "samples_per_s": steps * SAMPLES_PER_STEP / cpu_s,
        "cpu_s": cpu_s,
        "response_length": clock.response_length,
    }


def child(engine: str, steps: int, minibatch_size: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    if engine == "ours":
        result = ours(steps, minibatch_size)
    else:
        result = trl(steps, minibatch_size, gradient_checkpointing=engine == TRL_GRADIENT_CHECKPOINTING)
    return {**result, "threads": torch.get_num_threads()}  # a library that reset it would skew the ratio


def _run(engine: str, steps: int, minibatch_size: int) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", engine, "--steps", str(steps)]
    command += ["--minibatch-size", str(minibatch_size)]
    env = {
        "PYTHONPATH": str(ROOT),
        "PATH": "/usr/bin:/bin",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",  # everything is local; no hub look-ups inside the timed processes
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith("SPPO_") or k == "HOME"})
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.exit(f"{engine} run failed:\n{completed.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run (after one warm-up)")
    parser.add_argument(
        "--minibatch-size", type=int, default=32, choices=(8, 16, 32, 64), help="samples per optimizer step"
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="also time TRL with gradient checkpointing on (GRPOConfig's default; our engine has none)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=(*ENGINES, TRL_GRADIENT_CHECKPOINTING), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.minibatch_size)))
        return
    if importlib.util.find_spec("trl") is None:
        print(
            f"skipped benchmarks/trl_grpo.py: trl is not importable by {sys.executable}; run it with the"
            " python of a venv holding trl (see this file's docstring: .venv-trl/bin/pip install -e . trl)"
        )
        return
    engines = [*ENGINES, TRL_GRADIENT_CHECKPOINTING] if args.gradient_checkpointing else list(ENGINES)
    runs: dict[str, list[dict[str, Any]]] = {engine: [] for engine in engines}
    for round_index in range(args.rounds):
        for engine in engines if round_index % 2 == 0 else engines[::-1]:
            result = _run(engine, args.steps, args.minibatch_size)
            runs[engine].append(result)
            print(f"round {round_index} {engine:6}: {result['samples_per_s']:.2f} samples/s", flush=True)
    median = {
        engine: statistics.median(r["samples_per_s"] for r in results) for engine, results in runs.items()
    }
    summary = {
        f"ours_over_{engine}": median["ours"] / median[engine] for engine in engines if engine != "ours"
    }
    per_round = {
        f"ours_over_{engine}": [
            o["samples_per_s"] / t["samples_per_s"] for o, t in zip(runs["ours"], runs[engine], strict=True)
        ]
        for engine in engines
        if engine != "ours"
    }
    report = {
        "rounds": args.rounds,
        "steps": args.steps,
        "samples_per_step": SAMPLES_PER_STEP,
        "minibatch_size": args.minibatch_size,
        "versions": {package: _version(package) for package in VERSIONED},
        "median_samples_per_s": median,
        "summary": summary,
        "per_round": per_round,
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(json.dumps({"summary": summary, "per_round": per_round}, indent=2))


if __name__ == "__main__":
    main()
