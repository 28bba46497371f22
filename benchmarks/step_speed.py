"""Training-step speed before and after an engine change, SPPO against GRPO, measured in one run.

The engine of `--base` (a git revision, extracted with `git archive`) and the working tree's engine each
run the same steps on the fixture in their own single-threaded process; the runs alternate in rounds,
so both see the same machine load and only ratios are reported. Both algorithms get the same samples
per step (default 64: SPPO 64 prompts x 1, GRPO 8 prompts x 8). Pieces the new engine no longer runs
are timed inside the new engine's process: the no-grad old-log-prob forward it skips, and a full
(greedy + avg@k) evaluation against the greedy-only intermediate one.

    python benchmarks/step_speed.py --base 5c98f5c --rounds 3 --steps 4

Writes benchmarks/results/step_speed.json.
"""

import argparse
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
RESULTS = ROOT / "benchmarks" / "results" / "step_speed.json"
# both engines sample at one temperature: the base revision's fixture may ship another default
TEMPERATURE = 0.5
ALGORITHMS: dict[str, dict[str, Any]] = {
    "sppo": {"algorithm": "sppo"},
    "grpo": {"algorithm": "grpo", "group_size": 8},
}


def child(algorithm: str, steps: int, samples_per_step: int, pieces: bool) -> dict[str, Any]:
    """One measurement in this process (whatever engine PYTHONPATH points at)."""
    import torch

    from worker.engine.callbacks import TrainerCallbacks
    from worker.engine.config import RunConfig
    from worker.engine.fixtures import FIXTURE_GRADER, ensure_fixture
    from worker.engine.trainer import Trainer

    torch.set_num_threads(1)
    fixture = ensure_fixture()
    with tempfile.TemporaryDirectory() as output_dir:
        values: dict[str, Any] = {
            "model": str(fixture.model_dir),
            "train_file": str(fixture.train_file),
            "grader": FIXTURE_GRADER,
            "output_dir": output_dir,
            "seed": 0,
            "batch_size": samples_per_step // (8 if algorithm == "grpo" else 1),
            "temperature": TEMPERATURE,
            **ALGORITHMS[algorithm],
        }
        trainer = Trainer(RunConfig.from_dict(values), TrainerCallbacks())
        trainer.train_step()  # warm-up: allocator, critic initialisation
        started = time.process_time()  # CPU-seconds of this one-thread process: robust to other load
        for _ in range(steps):
            trainer.train_step()
        samples = steps * trainer.config.batch_size * trainer.config.samples_per_prompt
        result: dict[str, Any] = {"samples_per_s": samples / (time.process_time() - started)}
        if pieces:
            result.update(_pieces(trainer, fixture.validation_file))
    return result


def _pieces(trainer: Any, validation_file: Path) -> dict[str, float]:
    """Seconds of the pieces the new engine skips or shrinks, timed on the same trainer."""
    import torch

    from worker.engine.data import load_items
    from worker.engine.evaluate import evaluate_policy

    rollout, _, _, _ = trainer.collect(trainer.sampler.next_batch())
    started = time.perf_counter()
    trainer.update._policy_logprobs(rollout, torch.arange(rollout.input_ids.shape[0]))
    old_forward_s = time.perf_counter() - started
    step_started = time.perf_counter()
    trainer.train_step()
    step_s = time.perf_counter() - step_started
    items = load_items(validation_file)[:100]
    timings = {}
    for name, samples in (("greedy", 0), ("full", trainer.config.eval_samples)):
        started = time.perf_counter()
        evaluate_policy(
            trainer.policy,
            trainer.tokenizer,
            items,
            trainer.grader,
            samples=samples,
            temperature=trainer.config.temperature,
            max_response_tokens=trainer.config.max_response_tokens,
        )
        timings[name] = time.perf_counter() - started
    return {
        "old_logprob_forward_s": old_forward_s,
        "step_s": step_s,
        "eval_greedy_s": timings["greedy"],
        "eval_full_s": timings["full"],
    }


def _run(tree: Path, algorithm: str, steps: int, samples: int, pieces: bool) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", algorithm, "--steps", str(steps)]
    command += ["--samples", str(samples)]
    if pieces:
        command.append("--pieces")
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("SPPO_") or k == "HOME"})
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--base", default="main", help="git revision of the engine to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run (after one warm-up)")
    parser.add_argument("--samples", type=int, default=64, help="samples per step (GRPO: /8 prompts x 8)")
    parser.add_argument("--child", choices=sorted(ALGORITHMS), help=argparse.SUPPRESS)
    parser.add_argument("--pieces", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.samples, args.pieces)))
        return
    base_sha = subprocess.run(
        ["git", "rev-parse", args.base], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    head_sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as base_dir:
        archive = subprocess.run(
            ["git", "archive", base_sha, "worker"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", base_dir], input=archive, check=True)
        trees = {"before": Path(base_dir), "after": ROOT}
        runs: dict[str, list[dict[str, Any]]] = {f"{t}/{a}": [] for t in trees for a in ALGORITHMS}
        for round_index in range(args.rounds):
            for algorithm in ALGORITHMS:
                for tree_name, tree in trees.items():
                    with_pieces = tree_name == "after" and round_index == 0
                    result = _run(tree, algorithm, args.steps, args.samples, with_pieces)
                    runs[f"{tree_name}/{algorithm}"].append(result)
                    print(f"round {round_index} {tree_name:6} {algorithm}: {result}", flush=True)
    median = {key: statistics.median(r["samples_per_s"] for r in results) for key, results in runs.items()}
    pieces = {a: runs[f"after/{a}"][0] for a in ALGORITHMS}
    summary = {
        "sppo_after_over_before": median["after/sppo"] / median["before/sppo"],
        "grpo_after_over_before": median["after/grpo"] / median["before/grpo"],
        "sppo_over_grpo_before": median["before/sppo"] / median["before/grpo"],
        "sppo_over_grpo_after": median["after/sppo"] / median["after/grpo"],
        "old_logprob_forward_share_of_step": {
            a: p["old_logprob_forward_s"] / p["step_s"] for a, p in pieces.items()
        },
        "full_eval_over_greedy_eval": {a: p["eval_full_s"] / p["eval_greedy_s"] for a, p in pieces.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "base": base_sha,
        "head": head_sha,
        "rounds": args.rounds,
        "steps": args.steps,
        "samples_per_step": args.samples,
        "median_samples_per_s": median,
        "summary": summary,
        "runs": runs,
    }
    RESULTS.write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
