"""What the policy wrote: the few completions of a step kept for people to read (`on_samples`).

The choice is deterministic and small: the batch's best and worst rewards (the first row of a tie) show
the range, the first rows of the batch fill the rest; they are reported in batch order. Text longer than
`max_chars` is cut, and says so, so a step's samples stay a few kilobytes whatever the model writes.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    index: int
    """The row in the step's batch (on several ranks: in the first rank's share)."""
    prompt: str
    completion: str
    reward: float
    sub_rewards: dict[str, float] = field(default_factory=dict)
    """A multi grader's rewards by name ({} for other graders)."""
    truncated: bool = False
    """The prompt or the completion was longer than the run's sample_max_chars and is cut to it."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def chosen_rows(rewards: list[float], k: int) -> list[int]:
    """The rows kept of a batch with these rewards: the best, the worst, then the first rows; sorted."""
    if k >= len(rewards):
        return list(range(len(rewards)))
    extremes = [rewards.index(max(rewards)), rewards.index(min(rewards))] if k >= 2 else []
    kept = set(extremes)
    for row in range(len(rewards)):
        if len(kept) >= k:
            break
        kept.add(row)
    return sorted(kept)


def keep_samples(
    prompt_of: Callable[[int], str],
    completions: list[str],
    rewards: list[float],
    sub_rewards: list[dict[str, float]],
    *,
    k: int,
    max_chars: int,
) -> list[Sample]:
    """The step's kept samples (at most k), each text cut to max_chars; `prompt_of(row)` is the row's
    prompt text, asked only of the kept rows (decoding the whole batch's prompts would be wasted)."""
    kept = []
    for row in chosen_rows(rewards, max(k, 0)):
        prompt, completion = prompt_of(row), completions[row]
        kept.append(
            Sample(
                index=row,
                prompt=prompt[:max_chars],
                completion=completion[:max_chars],
                reward=rewards[row],
                sub_rewards=dict(sub_rewards[row]),
                truncated=len(prompt) > max_chars or len(completion) > max_chars,
            )
        )
    return kept
