"""Training-health alarms for every algorithm, from the step metrics and evaluations a job reports.

The engine's own health warnings (zero advantage, unchanged parameters, entropy collapse) say what one
step looked like; these say what a run is doing: reward that never varies (the grader cannot reward the
model, or there is nothing left to learn), responses cut off at the token limit, validation below the
first evaluation (the step-0 baseline), KL or entropy running away. Each kind of alarm is one entry with a
count: raised once as an event, later occurrences only counted, so a job shows one line, not fifty.
"""

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Level = Literal["warn", "error"]
LENGTH_LIMIT_SHARE = 0.95  # a mean response length this close to the limit means most responses are cut off
BASELINE_MARGIN = 0.02  # validation pass@1 this far below the baseline is a regression, not noise
KL_LIMIT = 1.0  # approx_kl per step; PPO's clipping keeps a healthy run two orders of magnitude below
GRADER_ERROR_RATE = 0.5  # failed gradings per step that, held for a whole window, raise an alarm
ENTROPY_GROWTH = 3.0  # token entropy this many times its first-step value: the policy is turning to noise
_NUMBER = re.compile(r"-?\d+(\.\d+)?%?")
TRACKER_FAILED = "tracker_failed"  # worker/tracking.py: a W&B or MLflow run that stopped logging


def _tracker(code: str) -> bool:
    return code.startswith(TRACKER_FAILED + ":")


@dataclass
class AlarmBook:
    """The alarms of one job; `observe_*` return the alarms raised (or raised again after clearing) now."""

    window: int
    grader: str = "the grader"
    max_response_tokens: int | None = None
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    rewards: deque[float] = field(default_factory=deque)
    grader_errors: deque[float] = field(default_factory=deque)
    baseline: float | None = None
    first_entropy: float | None = None
    warnings: dict[str, str] = field(default_factory=dict)

    @classmethod
    def restore(cls, window: int, stored: list[dict[str, Any]] | None) -> "AlarmBook":
        """A book continuing the alarms a job already has (after a resume or a requeue)."""
        return cls(window=window, entries={entry["code"]: dict(entry) for entry in stored or []})

    def public(self) -> list[dict[str, Any]]:
        return list(self.entries.values())

    def warning(self, message: str) -> None:
        """An engine warning of the step in progress; alike ones (numbers aside) are one alarm."""
        self.warnings["engine:" + _NUMBER.sub("N", message)] = message

    def observe_step(self, step: int, metrics: dict[str, float]) -> list[dict[str, Any]]:
        found: dict[str, tuple[Level, str]] = {
            code: ("warn", message) for code, message in self.warnings.items()
        }
        self.warnings = {}
        found.update(self._reward(metrics))
        found.update(self._length(metrics))
        found.update(self._divergence(metrics))
        kept = ("validation_below_baseline",)  # cleared by evaluations, and tracker alarms never
        return self._update(step, found, lambda code: code not in kept and not _tracker(code))

    def tracker_failed(self, step: int, tracker: str, message: str) -> list[dict[str, Any]]:
        """An experiment tracker turned off for the rest of the run: raised now, active until the run ends."""
        return self._update(step, {f"{TRACKER_FAILED}:{tracker}": ("warn", message)}, lambda code: False)

    def observe_evaluation(self, step: int, scores: dict[str, float]) -> list[dict[str, Any]]:
        score = scores.get("eval/pass@1")
        if score is None:
            return []
        if self.baseline is None:
            self.baseline = score
            return []
        found: dict[str, tuple[Level, str]] = {}
        if score < self.baseline - BASELINE_MARGIN:
            found["validation_below_baseline"] = (
                "warn",
                f"validation pass@1 {score:.3f} at step {step} is below the baseline {self.baseline:.3f} "
                "of the first evaluation: training is making the model worse",
            )
        return self._update(step, found, lambda code: code == "validation_below_baseline")

    def _reward(self, metrics: dict[str, float]) -> dict[str, tuple[Level, str]]:
        if "rollout/reward_mean" not in metrics:
            return {}
        mean = metrics["rollout/reward_mean"]
        # a step's rewards are all equal when their spread is 0 (older records: a mean of exactly 0 or 1)
        spread = metrics.get("rollout/reward_std", 0.0 if mean in (0, 1) else None)
        self.rewards.append(mean if spread == 0 else float("nan"))
        self.grader_errors.append(metrics.get("grader/error_rate", 0.0))
        while len(self.rewards) > self.window:
            self.rewards.popleft()
            self.grader_errors.popleft()
        found: dict[str, tuple[Level, str]] = {}
        if len(self.grader_errors) == self.window and min(self.grader_errors) >= GRADER_ERROR_RATE:
            found["grader_errors"] = (
                "error",
                f"{self.grader} failed on at least {min(self.grader_errors):.0%} of the samples in each of "
                f"the last {self.window} steps (reward 0 each time): check its error flags with "
                "POST /v1/fine_tuning/alpha/graders/run on a few completions",
            )
        if (
            len(self.rewards) < self.window
            or len(set(self.rewards)) != 1
            or self.rewards[0] != self.rewards[0]
        ):
            return found
        reward = self.rewards[0]
        if reward == 0:
            message = (
                f"every sample got reward 0 for the last {self.window} steps: {self.grader} never rewards "
                "this model's answers, so nothing is learned; check the grader against a few completions"
            )
        elif reward == 1:
            message = (
                f"every sample got reward 1 for the last {self.window} steps: the task is solved and nothing "
                f"is left to learn, or {self.grader} accepts any answer"
            )
        else:
            message = (
                f"every sample got reward {reward:g} for the last {self.window} steps: {self.grader} gives "
                "the same partial credit whatever the answer, so nothing is learned"
            )
        found["constant_reward"] = ("error", message)
        return found

    def _length(self, metrics: dict[str, float]) -> dict[str, tuple[Level, str]]:
        length = metrics.get("rollout/response_length_mean")
        limit = self.max_response_tokens
        if length is None or not limit or length < LENGTH_LIMIT_SHARE * limit:
            return {}
        message = (
            f"mean response length {length:.1f} tokens is at the limit of {limit}: responses are cut off "
            "before their answer; raise max_response_tokens"
        )
        return {"response_length_limit": ("warn", message)}

    def _divergence(self, metrics: dict[str, float]) -> dict[str, tuple[Level, str]]:
        found: dict[str, tuple[Level, str]] = {}
        kl = metrics.get("train/approx_kl")
        if kl is not None and kl > KL_LIMIT:
            found["kl_blowup"] = (
                "warn",
                f"approx_kl {kl:.3g} is above {KL_LIMIT}: the policy moves too far per step; "
                "lower learning_rate_multiplier",
            )
        entropy = metrics.get("train/entropy")
        if entropy is not None:
            if self.first_entropy is None:
                self.first_entropy = entropy
            elif self.first_entropy > 0 and entropy > ENTROPY_GROWTH * self.first_entropy:
                found["entropy_blowup"] = (
                    "warn",
                    f"token entropy {entropy:.3g} is {entropy / self.first_entropy:.1f}x its first-step "
                    f"value {self.first_entropy:.3g}: the policy is turning to noise; "
                    "lower learning_rate_multiplier",
                )
        return found

    def _update(
        self, step: int, found: dict[str, tuple[Level, str]], owns: Callable[[str], bool]
    ) -> list[dict[str, Any]]:
        """Count what was found; clear this check family's alarms that were not (`owns` names the family)."""
        raised: list[dict[str, Any]] = []
        for code, entry in self.entries.items():
            if owns(code) and code not in found:
                entry["active"] = False
        for code, (level, message) in found.items():
            entry = self.entries.setdefault(
                code, {"code": code, "level": level, "count": 0, "first_step": step}
            )
            if not entry.get("active", False):
                raised.append(entry)
            entry.update(message=message, count=entry["count"] + 1, last_step=step, active=True)
        return raised
