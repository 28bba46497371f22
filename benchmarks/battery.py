"""The defaults battery: the default job of every algorithm on task variants nobody tuned for.

Each built-in model gets running-sum task variants of its own (term counts and digit ranges other than its
fixture's, mixed difficulty, shorter and longer problems), generated here from seeds the fixtures never
used. A run is the job a user gets with no hyperparameters: LoRA, the model's `sppo_defaults.json`, one
epoch over a training file of `steps x batch_size` items, the engine's own evaluations (step 0, every
total/5 steps, the end) on a held-out file of the same variant. Overrides (`--set name=value`) turn it into
a sweep point. Each run is a single-threaded process of its own; `--jobs` runs that many at once.

    python benchmarks/battery.py --probe                      # base greedy pass@1 of every variant
    python benchmarks/battery.py --variants short-2to4 --algorithms sppo,grpo --seeds 0,1
    python benchmarks/battery.py --variants long-mixed --set learning_rate=1e-4 --tag lr1e-4
    python benchmarks/battery.py --report lr1e-4              # the markdown table of a tag's runs

Writes one JSON per run to benchmarks/results/battery/<tag>/ and prints a table.
"""

import argparse
import json
import math
import multiprocessing
import random
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from worker.engine.config import RunConfig, model_defaults
from worker.engine.evaluate import evaluate
from worker.engine.fixtures import FIXTURE_GRADER, ensure_fixture
from worker.engine.run import run_training

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "battery"
DATA_SEED_BASE = 7_000_000  # far from the fixtures' seeds (0-2): none of these items was ever trained on


@dataclass(frozen=True)
class TaskVariant:
    """A running-sum task `t1+...+tn=` with n in `terms` and each term in `values`."""

    name: str
    model: str
    terms: tuple[int, int]
    values: tuple[int, int]
    steps: int
    """Steps of the default SPPO job: the training file holds steps x the model's batch_size items."""
    validation_items: int = 400


BATTERY = {
    v.name: v
    for v in (
        # sppo-tiny was trained on 3 two-digit terms (10-99)
        TaskVariant("short-low", "sppo-tiny", (3, 3), (10, 49), steps=30),
        TaskVariant("short-high", "sppo-tiny", (3, 3), (50, 99), steps=30),
        TaskVariant("short-mixed", "sppo-tiny", (2, 3), (10, 99), steps=30),
        # sppo-tiny-long was trained on 13-16 two-digit terms (a 3-16 curriculum first)
        TaskVariant("long-mixed", "sppo-tiny-long", (6, 16), (10, 99), steps=30, validation_items=200),
        TaskVariant("long-short", "sppo-tiny-long", (4, 9), (10, 99), steps=30, validation_items=200),
        TaskVariant("long-high", "sppo-tiny-long", (8, 14), (60, 99), steps=30, validation_items=200),
    )
}


def problem(rng: random.Random, variant: TaskVariant) -> dict[str, Any]:
    values = [rng.randint(*variant.values) for _ in range(rng.randint(*variant.terms))]
    prompt = "+".join(map(str, values)) + "="
    return {"messages": [{"role": "user", "content": prompt}], "answer": str(sum(values))}


def write_items(path: Path, variant: TaskVariant, seed: int, count: int) -> Path:
    rng = random.Random(seed)
    path.write_text("".join(json.dumps(problem(rng, variant)) + "\n" for _ in range(count)))
    return path


def data_files(work: Path, variant: TaskVariant, seed: int, steps: int | None = None) -> tuple[Path, Path]:
    """(train, validation) of a variant: the validation file is the same for every seed of a variant;
    the training file holds `steps` (default: the variant's) x the model's batch_size items."""
    batch_size = int(model_defaults(ensure_fixture(variant.model).model_dir)["batch_size"])
    index = zlib.crc32(variant.name.encode()) % 1000  # stable whatever else the battery holds
    train = write_items(work / "train.jsonl", variant, DATA_SEED_BASE + 1000 * index + seed + 1,
                        (steps or variant.steps) * batch_size)  # fmt: skip
    validation = write_items(work / "validation.jsonl", variant, DATA_SEED_BASE + 1000 * index,
                             variant.validation_items)  # fmt: skip
    return train, validation


@dataclass
class RunResult:
    variant: str
    model: str
    algorithm: str
    seed: int
    overrides: dict[str, Any]
    evals: list[tuple[int, float]]
    """(step, eval/pass@1) of every engine evaluation, step 0 first."""
    steps: int
    samples: float
    cpu_s: float
    wall_s: float
    resolved: dict[str, Any]

    @property
    def base(self) -> float:
        return self.evals[0][1]

    @property
    def final(self) -> float:
        return self.evals[-1][1]

    @property
    def best(self) -> float:
        return max(score for _, score in self.evals)


def run_one(args: tuple[str, str, int, dict[str, Any], int | None]) -> RunResult:
    name, algorithm, seed, overrides, steps = args
    torch.set_num_threads(1)
    variant = BATTERY[name]
    fixture = ensure_fixture(variant.model)
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="battery-") as tmp:
        work = Path(tmp)
        train, validation = data_files(work, variant, seed, steps)
        config = RunConfig.from_dict(
            {
                "model": str(fixture.model_dir),
                "train_file": str(train),
                "validation_file": str(validation),
                "grader": FIXTURE_GRADER,
                "output_dir": str(work / "run"),
                "algorithm": algorithm,
                "seed": seed,
                "device": "cpu",
                # greedy pass@1 only: avg@k would multiply the evaluation cost, the battery does not read it
                "eval_samples": 1,
                "checkpoint_interval": 1_000_000,
                **overrides,
            }
        )
        result = run_training(config)
        lines = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [(int(m["step"]), float(m["eval/pass@1"])) for m in lines if "eval/pass@1" in m]
    samples = max(float(m.get("perf/samples", 0)) for m in lines)  # a running total
    resolved = {k: v for k, v in config.to_dict().items() if k not in ("grading", "metrics")}
    return RunResult(
        variant=name,
        model=variant.model,
        algorithm=algorithm,
        seed=seed,
        overrides=overrides,
        evals=evals,
        steps=result.final_step,
        samples=samples,
        cpu_s=time.process_time() - started_cpu,
        wall_s=time.perf_counter() - started_wall,
        resolved=resolved,
    )


def summary_line(run: RunResult) -> str:
    trace = " ".join(f"{step}:{score:.3f}" for step, score in run.evals)
    return (f"{run.variant:13s} {run.algorithm:9s} s{run.seed} base {run.base:.3f} final {run.final:.3f}"
            f" best {run.best:.3f} ({run.final - run.base:+.3f}) steps {run.steps} samples {run.samples:.0f}"
            f" cpu {run.cpu_s:.0f}s | {trace}")  # fmt: skip


def probe(name: str) -> tuple[str, float, float]:
    """(variant, base greedy pass@1, its standard error) on the variant's validation file."""
    torch.set_num_threads(1)
    variant = BATTERY[name]
    fixture = ensure_fixture(variant.model)
    with tempfile.TemporaryDirectory(prefix="battery-") as tmp:
        _, validation = data_files(Path(tmp), variant, 0)
        max_tokens = int(model_defaults(fixture.model_dir)["max_response_tokens"])
        result = evaluate(fixture.model_dir, None, validation, FIXTURE_GRADER, samples=0, temperature=1.0,
                          max_response_tokens=max_tokens, device="cpu")  # fmt: skip
    p = result.pass_at_1
    return name, p, math.sqrt(p * (1 - p) / variant.validation_items)


def report(tag: str) -> str:
    """A markdown table of a tag's runs: per variant and algorithm, base -> final greedy pass@1 (the last
    evaluation), its gain ± the standard error of the difference, and the best evaluation."""
    runs = [json.loads(path.read_text()) for path in sorted((RESULTS_DIR / tag).glob("*.json"))]
    lines = ["| variant | model | algorithm | seed | samples | base | final | gain ± SE | best |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for run in sorted(runs, key=lambda r: (r["model"], r["variant"], r["algorithm"], r["seed"])):
        items = BATTERY[run["variant"]].validation_items
        base, final = run["base"], run["final"]
        error = math.sqrt((base * (1 - base) + final * (1 - final)) / items)
        lines.append(f"| {run['variant']} | {run['model']} | {run['algorithm']} | {run['seed']} |"
                     f" {run['samples']:.0f} | {base:.3f} | {final:.3f} | {final - base:+.3f} ± {error:.3f} |"
                     f" {run['best']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def parse_set(values: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in values:
        key, _, raw = item.partition("=")
        overrides[key] = json.loads(raw) if raw[:1].isdigit() or raw in ("true", "false", "null") else raw
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default=",".join(BATTERY))
    parser.add_argument("--algorithms", default="sppo")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--set", action="append", default=[], help="hyperparameter override name=value")
    parser.add_argument("--tag", default="defaults")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--steps", type=int, help="SPPO steps of the training file (default: the variant's)")
    parser.add_argument("--probe", action="store_true", help="only score each variant's base model")
    parser.add_argument("--report", metavar="TAG", help="print the markdown table of a tag's results")
    args = parser.parse_args()
    if args.report:
        print(report(args.report))
        return
    variants = args.variants.split(",")
    with multiprocessing.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
        if args.probe:
            for name, p, se in pool.imap(probe, variants):
                print(f"{name:14s} base pass@1 {p:.3f} ± {se:.3f}", flush=True)
            return
        overrides = parse_set(args.set)
        specs = [(v, a, int(s), overrides, args.steps) for s in args.seeds.split(",") for v in variants
                 for a in args.algorithms.split(",")]  # fmt: skip
        out = RESULTS_DIR / args.tag
        out.mkdir(parents=True, exist_ok=True)
        for run in pool.imap_unordered(run_one, specs):
            record = asdict(run) | {"base": run.base, "final": run.final, "best": run.best}
            (out / f"{run.variant}-{run.algorithm}-seed{run.seed}.json").write_text(
                json.dumps(record, indent=1)
            )
            print(summary_line(run), flush=True)


if __name__ == "__main__":
    main()
