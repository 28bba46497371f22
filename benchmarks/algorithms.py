"""The algorithm race: SPPO (three critics) vs GRPO N=4/N=8 vs PPO-GAE vs REINFORCE on both fixture tasks.

Every run of a task gets the same training budget in CPU-seconds of its own single-threaded process and
the same number of samples per step (64), in LoRA mode (the API's) and/or full-parameter mode. Runs are
paired in time: the variants of one (task, mode, seed) are queued next to each other, so they share the
machine's load. Policies are copied at every checkpoint and scored on the validation set (greedy pass@1
and one sample per item) after the run, so evaluation never eats into the budget.

Hyperparameters are the fixture's shipped `sppo_defaults.json` (LoRA) and FULL_OVERRIDES on top of them
in full mode; the values used are recorded with every run. Targets for time-to-target are fixed here,
before any run (TARGETS): each base model's greedy pass@1 plus the engine issue's goal of +0.20.

    python benchmarks/algorithms.py                   # everything: 2 tasks x 2 modes x 7 variants x 3 seeds
    python benchmarks/algorithms.py --tasks sppo-tiny --modes lora --variants sppo,grpo_n8 \
        --seeds 1 --budget-s 30                       # a smoke run

Writes benchmarks/results/algorithms.json and algorithms.png (accuracy vs CPU-seconds and vs samples).
"""

import argparse
import json
import multiprocessing
import platform
import statistics
import tempfile
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from battery import BATTERY
from race import (
    CLOCKS,
    MODES,
    SAMPLES_PER_STEP,
    VARIANTS,
    Point,
    RunRecord,
    RunSpec,
    race_fixture,
    run_one,
    score,
)

from worker.engine.config import model_defaults
from worker.engine.fixtures import FIXTURE_NAMES, Fixture, ensure_fixture

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_GAIN = 0.20
TARGETS = {"sppo-tiny": 0.52, "sppo-tiny-long": 0.50}  # base 0.318 / 0.3025, + TARGET_GAIN
# full-parameter training needs a ~10x smaller learning rate than LoRA (ALGORITHMS.md: 3e-5 learns)
FULL_OVERRIDES: dict[str, Any] = {"learning_rate": 3e-5, "critic_learning_rate": 1e-4}
HYPERPARAMETERS = (
    "learning_rate",
    "critic_learning_rate",
    "temperature",
    "weight_decay",
    "ppo_epochs",
    "minibatch_size",
    "lora_rank",
    "lora_alpha",
    "lora_target_modules",
    "micro_batch_tokens",
)


def hyperparameters(task: str, mode: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The fixture's shipped defaults, FULL_OVERRIDES in full mode, then --set values."""
    defaults = model_defaults(ensure_fixture(task).model_dir)
    chosen = {k: v for k, v in defaults.items() if k in HYPERPARAMETERS}
    return {**chosen, **(FULL_OVERRIDES if mode == "full" else {}), **overrides}


def _interval(interval: int, variant: str) -> int:
    """Scored points every `interval` x 64 samples, whatever a variant draws per step (the paper framing's
    GRPO draws 512: a point every step would be at 64-sample resolution, every 10 steps far too coarse)."""
    overrides = VARIANTS[variant].overrides
    per_step = int(overrides.get("batch_size", 0)) * int(overrides.get("group_size", 1)) or SAMPLES_PER_STEP
    return max(1, int(interval * SAMPLES_PER_STEP // per_step))


def _lr(learning_rates: dict[str, float], variant: str) -> dict[str, Any]:
    return {"learning_rate": learning_rates[variant]} if variant in learning_rates else {}


def parse_set(values: list[str]) -> dict[str, Any]:
    """`--set learning_rate=3e-4 --set temperature=1.0` -> {"learning_rate": 0.0003, "temperature": 1.0}."""
    parsed: dict[str, Any] = {}
    for value in values:
        key, _, raw = value.partition("=")
        parsed[key] = json.loads(raw)
    return parsed


def base_scores(fixture: Fixture, temperature: float, max_items: int | None) -> tuple[float, float]:
    """The base model's (greedy, sampled) accuracy: from fixture.json when it was measured there."""
    manifest = json.loads((fixture.model_dir.parent / "fixture.json").read_text())
    sampled = manifest["base_sampled_accuracy"].get(str(temperature))
    if max_items is None and sampled is not None:
        return fixture.base_accuracy, float(sampled)
    greedy, sampled_now = score(fixture, None, temperature, False, max_items)
    return float(greedy), float(sampled_now)


def accuracy_at(points: list[Point], x: float, axis: str) -> float:
    """Validation accuracy of the latest checkpoint at or before x (a step function of `axis`)."""
    return float(([p.accuracy for p in points if getattr(p, axis) <= x] or [points[0].accuracy])[-1])


def time_to_target(points: list[Point], target: float) -> float | None:
    return next((p.training_s for p in points if p.accuracy >= target), None)


def samples_to_target(points: list[Point], target: float) -> float | None:
    return next((p.samples for p in points if p.accuracy >= target), None)


def spread(values: list[float]) -> dict[str, float]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values)}


def summarize(records: list[RunRecord], targets: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per `task/mode/variant`: accuracies, time-to-target, throughput, memory; per `task/mode`: ratios."""
    summary: dict[str, dict[str, Any]] = {}
    for key in sorted({(r.task, r.mode) for r in records}):
        task, mode = key
        target = targets[task]
        for name in VARIANTS:
            runs = [r for r in records if (r.task, r.mode, r.variant) == (task, mode, name)]
            if not runs:
                continue
            reached = [t for r in runs if (t := time_to_target(r.points, target)) is not None]
            by_samples = [t for r in runs if (t := samples_to_target(r.points, target)) is not None]
            summary[f"{task}/{mode}/{name}"] = {
                "label": VARIANTS[name].label,
                "seeds": len(runs),
                "target_accuracy": target,
                "final_accuracy": spread([r.points[-1].accuracy for r in runs]),
                "final_sampled_accuracy": spread([r.points[-1].sampled_accuracy for r in runs]),
                "best_accuracy": spread([max(p.accuracy for p in r.points) for r in runs]),
                "time_to_target_s": spread(reached) if reached else None,
                "samples_to_target": spread(by_samples) if by_samples else None,
                "reached_target": f"{len(reached)}/{len(runs)}",
                "samples_per_s": spread([r.samples_per_s for r in runs]),
                "peak_memory_mb": spread([r.peak_memory_mb for r in runs]),
                "zero_adv_frac": spread([r.zero_adv_frac_mean for r in runs]),
                "steps": spread([float(r.steps) for r in runs]),
                "samples": spread([r.points[-1].samples for r in runs]),
            }
        for grpo_name in ("grpo_n8", "grpo_n8_prompts"):
            ratio = _ratio(summary.get(f"{task}/{mode}/sppo"), summary.get(f"{task}/{mode}/{grpo_name}"))
            if ratio is not None:
                summary[f"{task}/{mode}/ratio" + ("" if grpo_name == "grpo_n8" else "_prompts")] = ratio
    return summary


def _ratio(sppo: dict[str, Any] | None, grpo: dict[str, Any] | None) -> dict[str, Any] | None:
    """GRPO's mean time-to-target over SPPO's (CPU-seconds and samples), or None without both runs."""
    if not sppo or not grpo:
        return None
    ratio = None
    if sppo["time_to_target_s"] and grpo["time_to_target_s"]:
        ratio = grpo["time_to_target_s"]["mean"] / sppo["time_to_target_s"]["mean"]
    samples_ratio = None
    if sppo.get("samples_to_target") and grpo.get("samples_to_target"):
        samples_ratio = grpo["samples_to_target"]["mean"] / sppo["samples_to_target"]["mean"]
    every_seed = all(s["reached_target"].split("/")[0] == str(s["seeds"]) for s in (sppo, grpo))
    return {
        "grpo_over_sppo_time_to_target": ratio,
        "grpo_over_sppo_samples_to_target": samples_ratio,
        "reached_target": {"sppo": sppo["reached_target"], "grpo": grpo["reached_target"]},
        "note": "None: one of the two never reached the target within the budget"
        if ratio is None
        else "GRPO's mean time-to-target / SPPO's over the seeds that reached it"
        + ("" if every_seed else "; a lower bound: the other seeds never reached it in the budget"),
    }


def plot(records: list[RunRecord], budget_s: float, path: Path, targets: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    panels = sorted({(r.task, r.mode) for r in records})
    fig, axes = plt.subplots(len(panels), 2, figsize=(13, 4.2 * len(panels)), squeeze=False)
    for row, (task, mode) in enumerate(panels):
        for col, (axis, label) in enumerate(
            (("training_s", "training CPU-seconds (one thread)"), ("samples", "samples generated"))
        ):
            ax = axes[row][col]
            runs_here = [r for r in records if (r.task, r.mode) == (task, mode)]
            end = max(
                [budget_s if col == 0 else 0.0] + [getattr(p, axis) for r in runs_here for p in r.points]
            )
            grid = [end * i / 100 for i in range(101)]
            for name, variant in VARIANTS.items():
                runs = [r for r in runs_here if r.variant == name]
                if not runs:
                    continue
                curves = [[accuracy_at(r.points, x, axis) for x in grid] for r in runs]  # (seeds, grid)
                columns = list(zip(*curves, strict=True))
                (line,) = ax.plot(
                    grid, [statistics.fmean(c) for c in columns], label=f"{variant.label} ({len(runs)})"
                )
                ax.fill_between(
                    grid,
                    [min(c) for c in columns],
                    [max(c) for c in columns],
                    color=line.get_color(),
                    alpha=0.12,
                )
            ax.axhline(targets[task], color="grey", linestyle=":", linewidth=1, label="target")
            ax.set_xlabel(label)
            ax.set_ylabel("validation greedy pass@1")
            ax.set_title(f"{task}, {mode}: mean and min-max over seeds")
            ax.grid(alpha=0.3)
            ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default=",".join(FIXTURE_NAMES), help="comma-separated fixtures")
    parser.add_argument("--modes", default=",".join(MODES), help="lora, full or both")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of variants")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant, from --first-seed")
    parser.add_argument("--first-seed", type=int, default=0, help="add seeds to an earlier, shorter run")
    parser.add_argument("--budget-s", type=float, default=180.0, help="training seconds per run")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="budget clock")
    parser.add_argument(
        "--checkpoint-interval", type=int, default=10, help="steps (of 64 samples) between scored points"
    )
    parser.add_argument("--max-eval-items", type=int, help="score only the first N validation items")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=JSON", help="override a hyperparameter (a sweep)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the JSON and PNG")
    parser.add_argument(
        "--data", choices=sorted(BATTERY), help="train and score on this held-out task variant"
    )
    parser.add_argument(
        "--lr", action="append", default=[], metavar="VARIANT=LR", help="a variant's own learning rate"
    )
    parser.add_argument("--from-json", type=Path, help="redo summary and plot from an algorithms.json")
    args = parser.parse_args()
    unknown_keys = set(parse_set(args.set)) - set(HYPERPARAMETERS)
    if unknown_keys:
        parser.error(f"--set takes only {', '.join(HYPERPARAMETERS)}; got {sorted(unknown_keys)}")
    for option, valid in (("tasks", FIXTURE_NAMES), ("modes", tuple(MODES)), ("variants", tuple(VARIANTS))):
        unknown = set(getattr(args, option).split(",")) - set(valid)
        if unknown:
            parser.error(f"unknown {option} {sorted(unknown)}; valid: {', '.join(valid)}")
    return args


def write_results(out: Path, setup: dict[str, Any], records: list[RunRecord]) -> None:
    """JSON and plot of the runs finished so far (rewritten after every run, so a cut run keeps them)."""
    records = sorted(records, key=lambda r: (r.task, r.mode, list(VARIANTS).index(r.variant), r.seed))
    report = {
        "setup": {**setup, "runs_finished": len(records)},
        "summary": summarize(records, setup["targets"]),
        "runs": [asdict(r) for r in records],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "algorithms.json").write_text(json.dumps(report, indent=2))
    plot(records, setup["budget_s"], out / "algorithms.png", setup["targets"])


def load_records(path: Path) -> tuple[dict[str, Any], list[RunRecord]]:
    report = json.loads(path.read_text())
    runs = [RunRecord(**{**r, "points": [Point(**p) for p in r["points"]]}) for r in report["runs"]]
    return report["setup"], runs


def main() -> None:
    args = parse_args()
    if args.from_json is not None:
        recorded_setup, recorded = load_records(args.from_json)
        write_results(args.out, recorded_setup, recorded)
        print(json.dumps(summarize(recorded, recorded_setup["targets"]), indent=2))
        return
    torch.set_num_threads(1)
    started = time.perf_counter()
    tasks, modes, overrides = args.tasks.split(","), args.modes.split(","), parse_set(args.set)
    learning_rates = {k: float(v) for k, _, v in (item.partition("=") for item in args.lr)}
    setup: dict[str, Any] = {
        "budget_s": args.budget_s,
        "clock": args.clock,
        "seeds": args.seeds,
        "tasks": tasks,
        "modes": modes,
        "variants": args.variants.split(","),
        "targets": dict(TARGETS),
        "data": args.data,
        "learning_rates": learning_rates,
        "samples_per_step": SAMPLES_PER_STEP,
        "checkpoint_interval": args.checkpoint_interval,
        "jobs": args.jobs,
        "base": {},
        "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} cores",
        "torch": torch.__version__,
    }
    for task in tasks:
        fixture = race_fixture(task, args.data, Path(tempfile.mkdtemp(prefix="sppo-bench-data-")))
        temperature = float(hyperparameters(task, "lora", overrides)["temperature"])
        if args.data is None:
            greedy, sampled = base_scores(fixture, temperature, args.max_eval_items)
        else:  # a held-out task variant: its base score sets its target (+0.20), fixed before any run
            greedy, sampled = score(fixture, None, temperature, False, args.max_eval_items)
            setup["targets"][task] = round(greedy + TARGET_GAIN, 3)
        items = sum(1 for _ in fixture.validation_file.open())
        setup["base"][task] = {
            "accuracy": greedy,
            "sampled_accuracy": sampled,
            "validation_items": min(items, args.max_eval_items or items),
        }
        print(f"{task} base model: greedy {greedy:.3f}, sampled {sampled:.3f}", flush=True)
    records: list[RunRecord] = []
    with tempfile.TemporaryDirectory(prefix="sppo-bench-") as work_dir:
        specs = [
            RunSpec(
                task,
                mode,
                name,
                seed,
                args.budget_s,
                args.clock,
                _interval(args.checkpoint_interval, name),
                hyperparameters(task, mode, overrides | _lr(learning_rates, name)),
                work_dir,
                args.data,
            )
            for task in tasks
            for mode in modes
            for seed in range(args.first_seed, args.first_seed + args.seeds)
            for name in args.variants.split(",")
        ]
        # a fresh process per run: peak memory (ru_maxrss) is per run and torch state never leaks
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.jobs, maxtasksperchild=1) as pool:
            for record in pool.imap_unordered(partial(run_one, max_items=args.max_eval_items), specs):
                base = setup["base"][record.task]
                record.points.insert(
                    0,
                    Point(
                        0, 0.0, 0.0, 0.0, base["sampled_accuracy"], base["accuracy"], base["sampled_accuracy"]
                    ),
                )
                records.append(record)
                setup["benchmark_wall_s"] = round(time.perf_counter() - started, 1)
                write_results(args.out, setup, records)
                print(
                    f"{record.task} {record.mode} {record.variant} seed {record.seed}: final accuracy"
                    f" {record.points[-1].accuracy:.3f} after {record.steps} steps,"
                    f" {record.samples_per_s:.1f} samples/s, peak {record.peak_memory_mb:.0f} MB",
                    flush=True,
                )
    print(json.dumps(summarize(records, setup["targets"]), indent=2))


if __name__ == "__main__":
    main()
