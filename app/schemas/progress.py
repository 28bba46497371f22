"""Metric series objects (an extension of the OpenAI fine-tuning API)."""

from typing import Literal

from pydantic import BaseModel

from app.models import MetricPoint


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
