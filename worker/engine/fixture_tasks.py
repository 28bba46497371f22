"""The two fixture tasks: what a problem looks like, how it is graded, how big its model is.

`sppo-tiny`: "a+b+c=" with two-digit terms, chain of thought `a+b=s;s+c=t#### t` (at most 32 tokens).
`sppo-tiny-long`: a running sum of 12-16 two-digit terms written step by step
(`a+b=s1;s1+c=s2;...#### total`, 130-180 tokens), one reward at the end: the long-horizon task where a
token-level critic's "tail effect" and the cost of N samples per prompt show.
"""

import random
from collections.abc import Callable
from dataclasses import dataclass, field

Problem = tuple[str, str, str]
"""(prompt, chain-of-thought completion, answer)."""

# Both tasks end in `#### answer`; the grader reads the number after the last `####`.
FIXTURE_GRADER: dict[str, str] = {
    "type": "regex",
    "name": "final_answer",
    "input": "{{sample.output_text}}",
    "pattern": r"####\s*(-?\d+)",
    "reference": "{{item.answer}}",
}

# Partial credit for the same tasks, as a Python grader: 1 for the right total, less the further the final
# number is from it, 0 from 20 off; a near miss earns something (a dense reward next to the regex's 0/1).
CLOSENESS_GRADER: dict[str, str] = {
    "type": "python",
    "name": "closeness",
    "source": (
        "import re\n\n\n"
        "def grade(sample, item):\n"
        '    found = re.findall(r"####\\s*(-?\\d+)", sample["output_text"])\n'
        "    if not found:\n"
        "        return 0.0\n"
        '    return max(0.0, 1.0 - abs(int(found[-1]) - int(item["answer"])) / 20)\n'
    ),
}


def running_sum_problem(rng: random.Random, terms: int) -> Problem:
    """`t1+t2+...=` with two-digit terms, solved one addition at a time."""
    values = [rng.randint(10, 99) for _ in range(terms)]
    steps, total = [], values[0]
    for value in values[1:]:
        steps.append(f"{total}+{value}={total + value}")
        total += value
    return "+".join(map(str, values)) + "=", ";".join(steps) + f"#### {total}", str(total)


def short_problem(rng: random.Random) -> Problem:
    return running_sum_problem(rng, 3)


def long_problem(rng: random.Random) -> Problem:
    return running_sum_problem(rng, rng.randint(13, 16))


def curriculum_problem(rng: random.Random) -> Problem:
    """3 to 16 terms: the warm-up of the long task learns short sums first (a built-in curriculum)."""
    return running_sum_problem(rng, rng.randint(3, 16))


@dataclass(frozen=True)
class FixtureTask:
    """One fixture: its task, its model's shape and the recommended hyperparameters it ships with."""

    name: str
    make_problem: Callable[[random.Random], Problem]
    max_response_tokens: int
    max_positions: int
    defaults: dict[str, object]
    validation_items: int
    selection_items: int
    """Held-out problems the warm-up measures greedy accuracy on to choose its end point."""
    target_accuracy: float = 0.30
    window: tuple[float, float] = (0.25, 0.35)
    min_sampled_accuracy: float = 0.15
    """Without a measured "temperature" in `defaults`, the default temperature is the hottest of
    fixture_build.SAMPLED_TEMPERATURES at which this share of sampled answers is right."""
    sft_batch: int = 128
    sft_problem: Callable[[random.Random], Problem] | None = None
    """What the supervised warm-up trains on (default: make_problem)."""
    measure_every: int = 1
    """Steps between accuracy measurements once accuracy is above 0.02 (every 20 steps before)."""
    notes: dict[str, object] = field(default_factory=dict)


_COMMON: dict[str, object] = {
    "weight_decay": 0.0,
    "lora_rank": 16,
    "lora_alpha": 32,
    "micro_batch_tokens": 16384,
}

SHORT = FixtureTask(
    name="sppo-tiny",
    make_problem=short_problem,
    # the longest completion ("99+99=198;198+99=297#### 297") is 29 characters plus EOS
    max_response_tokens=32,
    max_positions=64,
    defaults={
        **_COMMON,
        # the defaults battery (docs/engine.md): 3e-4 was tuned on this fixture's own data; 1e-4 learns
        # as fast on held-out variants, GRPO (std-normalised advantages) wants about a third of SPPO's
        "learning_rate": 1e-4,
        "algorithms": {"grpo": {"learning_rate": 3e-5}},
        "critic_learning_rate": 1e-4,
        "max_response_tokens": 32,
        "batch_size": 64,
        "minibatch_size": 32,
        "ppo_epochs": 2,
        "temperature": 0.5,  # the sweep in docs/engine.md: +0.28 greedy pass@1 in 18 CPU-s (1.0: +0.07)
    },
    validation_items=500,
    selection_items=300,
    sft_batch=64,
    measure_every=4,
)

LONG = FixtureTask(
    name="sppo-tiny-long",
    make_problem=long_problem,
    # 16 terms: 15 additions of up to 12 characters, then `#### dddd` and EOS
    max_response_tokens=192,
    max_positions=256,
    defaults={
        **_COMMON,
        # the defaults battery (docs/engine.md): at 3e-4 every algorithm made held-out variants worse
        # (0.45 -> 0.20 in 20 steps); 5e-5 climbs steadily, GRPO at 3e-5
        "learning_rate": 5e-5,
        "algorithms": {"grpo": {"learning_rate": 3e-5}},
        "critic_learning_rate": 1e-4,
        "max_response_tokens": 192,
        "batch_size": 32,
        "minibatch_size": 16,
        "ppo_epochs": 2,
        "eval_max_items": 400,
    },
    validation_items=400,
    selection_items=100,
    sft_batch=32,
    sft_problem=curriculum_problem,
    measure_every=5,
)

TASKS = {task.name: task for task in (SHORT, LONG)}
