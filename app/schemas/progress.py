"""Metric series objects (an extension of the OpenAI fine-tuning API)."""

from typing import Literal

from pydantic import BaseModel

from core.models import MetricPoint

# The step metrics a person watches (dashboard charts, `sppo jobs watch`); names as the engine reports them.
HEADLINE_METRICS = (
    "rollout/reward_mean",
    "rollout/accuracy",
    "eval/pass@1",
    "train/policy_loss",
    "train/critic_loss",
    "rollout/response_length_mean",
    "perf/tokens_per_s",
)


class MetricPointPublic(BaseModel):
    object: Literal["fine_tuning.job.metrics"] = "fine_tuning.job.metrics"
    step: int
    created_at: int
    metrics: dict[str, float]

    @classmethod
    def of(cls, point: MetricPoint) -> "MetricPointPublic":
        return cls(step=point.step, created_at=point.created_at, metrics=dict(point.metrics))


class MetricSeriesPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[MetricPointPublic]
    has_more: bool
    last_step: int | None
