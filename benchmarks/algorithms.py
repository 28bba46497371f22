"""SPPO vs GRPO (N=4, N=8) vs PPO-GAE, and SPPO's two critics, on the fixture task at equal compute.

Every run gets the same training budget in seconds and the same number of samples per step (64). The
policy adapter is copied at every checkpoint and scored on the validation set (greedy pass@1) after the
run, so evaluation never eats into the budget. Each (variant, seed) runs in its own single-threaded
process, so the peak memory is that run's own.

The budget clock is `cpu` by default: the run's process CPU seconds, which equal wall-clock seconds on a
dedicated core but do not depend on what else the (shared) machine is doing; `--clock wall` uses
wall-clock seconds instead. Both are recorded.

    python benchmarks/algorithms.py                        # the full run (about 30 min on 2 cores)
    python benchmarks/algorithms.py --budget-s 20 --seeds 1 --variants sppo,grpo_n8   # a smoke run

Writes benchmarks/results/algorithms.json and benchmarks/results/algorithms.png.
"""

import argparse
import json
import multiprocessing
import platform
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from worker.engine.callbacks import Control, StartInfo, TrainerCallbacks
from worker.engine.config import RunConfig
from worker.engine.evaluate import evaluate
from worker.engine.fixtures import FIXTURE_GRADER, MAX_RESPONSE_TOKENS, Fixture, ensure_fixture
from worker.engine.trainer import run_training

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SAMPLES_PER_STEP = 64  # the same for every variant: prompts per step = 64 / samples per prompt
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    overrides: dict[str, Any]


VARIANTS = {
    v.name: v
    for v in (
        Variant("sppo", "SPPO (separate critic)", {"algorithm": "sppo", "critic": "separate"}),
        Variant(
            "sppo_shared_lora", "SPPO (shared-LoRA critic)", {"algorithm": "sppo", "critic": "shared_lora"}
        ),
        Variant("grpo_n4", "GRPO N=4", {"algorithm": "grpo", "group_size": 4}),
        Variant("grpo_n8", "GRPO N=8", {"algorithm": "grpo", "group_size": 8}),
        Variant("ppo_gae", "PPO-GAE (token critic)", {"algorithm": "ppo", "critic": "separate"}),
    )
}


@dataclass(frozen=True)
class RunSpec:
    variant: str
    seed: int
    budget_s: float
    clock: str
    checkpoint_interval: int
    learning_rate: float
    critic_learning_rate: float
    temperature: float
    work_dir: str


@dataclass
class Point:
    """One scored checkpoint of a run."""

    step: int
    training_s: float
    """Budget clock at the end of the step (model loading, checkpoint writing and scoring excluded)."""
    wall_s: float
    samples: float
    train_accuracy: float
    """rollout/accuracy of that step: the policy's own sampled answers."""
    accuracy: float = 0.0
    """Validation greedy pass@1, filled in after the run."""
    sampled_accuracy: float = 0.0
    """Validation accuracy of one sample per item at the training temperature (avg@1)."""


@dataclass
class RunRecord:
    variant: str
    seed: int
    points: list[Point]
    samples_per_s: float
    peak_memory_mb: float
    zero_adv_frac_mean: float
    steps: int


class BudgetCallbacks(TrainerCallbacks):
    """Pauses a run once its training clock passes the budget and copies the policy adapter at every
    checkpoint. The clock starts after model loading and leaves out checkpoint writing (between on_step
    and on_checkpoint) and the callbacks' own work; "pause" makes the trainer checkpoint the last
    completed step before it returns, so the final state is scored too.
    """

    def __init__(self, budget_s: float, clock: Callable[[], float], adapter_dir: Path) -> None:
        self.budget_s, self.clock, self.adapter_dir = budget_s, clock, adapter_dir
        self.started = clock()
        self.wall_started = time.perf_counter()
        self.excluded = 0.0
        self.step_ended_at: float | None = None
        self.last_step: tuple[int, float, float, dict[str, float]] | None = None
        self.points: list[Point] = []
        self.adapters: list[Path] = []
        self.zero_adv: list[float] = []

    def training_s(self) -> float:
        return self.clock() - self.started - self.excluded

    def on_start(self, info: StartInfo) -> None:
        self.started, self.wall_started = self.clock(), time.perf_counter()

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.step_ended_at = self.clock()
        self.last_step = (step, self.training_s(), time.perf_counter() - self.wall_started, metrics)
        self.zero_adv.append(metrics.get("health/zero_adv_frac", 0.0))

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        entered = self.clock()
        if self.step_ended_at is not None:
            self.excluded += entered - self.step_ended_at
            self.step_ended_at = None
        if self.last_step is not None and (not self.points or self.points[-1].step != step):
            _, training_s, wall_s, step_metrics = self.last_step
            target = self.adapter_dir / f"step-{step:06d}"
            shutil.copytree(path / "adapter", target)
            self.adapters.append(target)
            self.points.append(
                Point(
                    step, training_s, wall_s, step_metrics["perf/samples"], step_metrics["rollout/accuracy"]
                )
            )
        self.excluded += self.clock() - entered

    def control(self) -> Control:
        return "pause" if self.training_s() >= self.budget_s else "continue"


def run_config(fixture: Fixture, spec: RunSpec, output_dir: Path) -> RunConfig:
    variant = VARIANTS[spec.variant]
    group_size = int(variant.overrides.get("group_size", 1))
    return RunConfig.from_dict(
        {
            "model": str(fixture.model_dir),
            "train_file": str(fixture.train_file),
            "grader": FIXTURE_GRADER,
            "output_dir": str(output_dir),
            "batch_size": SAMPLES_PER_STEP // group_size,
            "max_steps": 1_000_000,  # the budget ends the run
            "checkpoint_interval": spec.checkpoint_interval,
            "keep_checkpoints": 1,
            "seed": spec.seed,
            "device": "cpu",
            "max_response_tokens": MAX_RESPONSE_TOKENS,
            "learning_rate": spec.learning_rate,
            "critic_learning_rate": spec.critic_learning_rate,
            "temperature": spec.temperature,
            **variant.overrides,
        }
    )


def score(fixture: Fixture, adapter: Path | None, temperature: float) -> tuple[float, float]:
    """(greedy pass@1, avg@1 sampled at the training temperature) on the validation file."""
    result = evaluate(
        fixture.model_dir,
        adapter,
        fixture.validation_file,
        FIXTURE_GRADER,
        samples=1,
        temperature=temperature,
        max_response_tokens=MAX_RESPONSE_TOKENS,
        device="cpu",
    )
    return result.pass_at_1, result.avg_at_k


def run_one(spec: RunSpec) -> RunRecord:
    """Train one (variant, seed) to its budget, then score its checkpoints. Runs in a child process."""
    torch.set_num_threads(1)
    fixture = ensure_fixture()
    work_dir = Path(spec.work_dir) / f"{spec.variant}-seed{spec.seed}"
    callbacks = BudgetCallbacks(spec.budget_s, CLOCKS[spec.clock], work_dir / "adapters")
    result = run_training(run_config(fixture, spec, work_dir / "run"), callbacks)
    peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before scoring loads more
    for point, adapter in zip(callbacks.points, callbacks.adapters, strict=True):
        point.accuracy, point.sampled_accuracy = score(fixture, adapter, spec.temperature)
    last = callbacks.points[-1]
    return RunRecord(
        variant=spec.variant,
        seed=spec.seed,
        points=callbacks.points,
        samples_per_s=last.samples / last.training_s,
        peak_memory_mb=peak_memory_mb,
        zero_adv_frac_mean=statistics.fmean(callbacks.zero_adv),
        steps=result.final_step,
    )


def accuracy_at(points: list[Point], seconds: float) -> float:
    """Validation accuracy of the latest checkpoint at or before `seconds` (a step function)."""
    return [p.accuracy for p in points if p.training_s <= seconds][-1]


def time_to_target(points: list[Point], target: float) -> float | None:
    return next((p.training_s for p in points if p.accuracy >= target), None)


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def summarize(records: list[RunRecord], target: float) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for name in VARIANTS:
        runs = [r for r in records if r.variant == name]
        if not runs:
            continue
        reached = [t for r in runs if (t := time_to_target(r.points, target)) is not None]
        summary[name] = {
            "label": VARIANTS[name].label,
            "seeds": len(runs),
            "final_accuracy": spread([r.points[-1].accuracy for r in runs]),
            "best_accuracy": spread([max(p.accuracy for p in r.points) for r in runs]),
            "time_to_target_s": spread(reached) if reached else None,
            "reached_target": f"{len(reached)}/{len(runs)}",
            "samples_per_s": spread([r.samples_per_s for r in runs]),
            "peak_memory_mb": spread([r.peak_memory_mb for r in runs]),
            "zero_adv_frac": spread([r.zero_adv_frac_mean for r in runs]),
            "steps": spread([float(r.steps) for r in runs]),
            "samples": spread([r.points[-1].samples for r in runs]),
        }
    return summary


def plot(records: list[RunRecord], budget_s: float, target: float, clock: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    # the step that crosses the budget is finished when it was already in its update phase
    end = max([budget_s] + [p.training_s for r in records for p in r.points])
    grid = [end * i / 100 for i in range(101)]
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, variant in VARIANTS.items():
        runs = [r for r in records if r.variant == name]
        if not runs:
            continue
        curves = [[accuracy_at(r.points, t) for t in grid] for r in runs]  # (seeds, grid)
        mean = [statistics.fmean(column) for column in zip(*curves, strict=True)]
        (line,) = ax.plot(grid, mean, label=f"{variant.label} ({len(runs)} seeds)")
        low = [min(column) for column in zip(*curves, strict=True)]
        high = [max(column) for column in zip(*curves, strict=True)]
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.15)
    ax.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"target {target:.2f}")
    ax.set_xlabel(f"training seconds ({clock} clock, one thread)")
    ax.set_ylabel("validation accuracy (greedy pass@1)")
    ax.set_title("sppo-tiny fixture: accuracy at equal compute (mean, min-max band over seeds)")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget-s", type=float, default=120.0, help="training seconds per run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant (0..N-1)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of variants")
    parser.add_argument("--target", type=float, default=0.4, help="accuracy for time-to-target")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="budget clock (see above)")
    parser.add_argument("--checkpoint-interval", type=int, default=10, help="steps between scored points")
    # pinned here rather than read from the fixture's sppo_defaults.json, so results stay comparable
    # when those defaults are retuned; these are the values measured for LoRA-SPPO on the fixture
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="actor learning rate")
    parser.add_argument("--critic-learning-rate", type=float, default=2e-4, help="critic learning rate")
    parser.add_argument("--temperature", type=float, default=0.5, help="sampling temperature")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the JSON and PNG")
    parser.add_argument(
        "--from-json", type=Path, help="redo summary and plot from an earlier algorithms.json, train nothing"
    )
    args = parser.parse_args()
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; valid: {', '.join(VARIANTS)}")
    return args


def write_results(args: argparse.Namespace, setup: dict[str, Any], records: list[RunRecord]) -> None:
    """JSON and plot of the runs finished so far (rewritten after every run, so a cut run keeps them)."""
    records = sorted(records, key=lambda r: (list(VARIANTS).index(r.variant), r.seed))
    report = {
        "setup": {**setup, "runs_finished": len(records)},  # fewer than planned when cut short
        "summary": summarize(records, args.target),
        "runs": [asdict(r) for r in records],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "algorithms.json").write_text(json.dumps(report, indent=2))
    plot(records, args.budget_s, args.target, args.clock, args.out / "algorithms.png")


def redo_from_json(args: argparse.Namespace, path: Path) -> None:
    """Summary and plot again from recorded runs (e.g. for another --target), without training."""
    report = json.loads(path.read_text())
    records = [
        RunRecord(**{**run, "points": [Point(**point) for point in run["points"]]}) for run in report["runs"]
    ]
    setup = {**report["setup"], "target_accuracy": args.target}
    args.budget_s, args.clock = setup["budget_s"], setup["clock"]
    write_results(args, setup, records)
    print(json.dumps(summarize(records, args.target), indent=2))


def main() -> None:
    args = parse_args()
    if args.from_json is not None:
        redo_from_json(args, args.from_json)
        return
    torch.set_num_threads(1)
    started = time.perf_counter()
    fixture = ensure_fixture()  # built once here, not by every child at the same time
    base_accuracy, base_sampled = score(fixture, None, args.temperature)
    print(f"fixture base model: validation accuracy {base_accuracy:.3f}", flush=True)
    setup: dict[str, Any] = {
        "budget_s": args.budget_s,
        "clock": args.clock,
        "seeds": args.seeds,
        "target_accuracy": args.target,
        "samples_per_step": SAMPLES_PER_STEP,
        "checkpoint_interval": args.checkpoint_interval,
        "learning_rate": args.learning_rate,
        "critic_learning_rate": args.critic_learning_rate,
        "temperature": args.temperature,
        "max_response_tokens": MAX_RESPONSE_TOKENS,
        "jobs": args.jobs,
        "base_accuracy": base_accuracy,
        "base_sampled_accuracy": base_sampled,
        "validation_items": sum(1 for _ in fixture.validation_file.open()),
        "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} cores",
        "torch": torch.__version__,
    }
    records: list[RunRecord] = []
    with tempfile.TemporaryDirectory(prefix="sppo-bench-") as work_dir:
        specs = [
            RunSpec(
                name,
                seed,
                args.budget_s,
                args.clock,
                args.checkpoint_interval,
                args.learning_rate,
                args.critic_learning_rate,
                args.temperature,
                work_dir,
            )
            for seed in range(args.seeds)
            for name in args.variants.split(",")
        ]
        # a fresh process per run: peak memory (ru_maxrss) is per run and torch state never leaks
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.jobs, maxtasksperchild=1) as pool:
            for record in pool.imap_unordered(run_one, specs):
                record.points.insert(0, Point(0, 0.0, 0.0, 0.0, base_sampled, base_accuracy, base_sampled))
                records.append(record)
                setup["benchmark_wall_s"] = round(time.perf_counter() - started, 1)
                write_results(args, setup, records)
                print(
                    f"{record.variant:<17} seed {record.seed}:"
                    f" final accuracy {record.points[-1].accuracy:.3f} after {record.steps} steps,"
                    f" {record.samples_per_s:.1f} samples/s, peak {record.peak_memory_mb:.0f} MB",
                    flush=True,
                )
    print(json.dumps(summarize(records, args.target), indent=2))


if __name__ == "__main__":
    main()
