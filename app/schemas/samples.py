"""Training sample objects: what the policy wrote at a step (an extension of the OpenAI fine-tuning API)."""

from typing import Literal

from pydantic import BaseModel, Field

from core.models import TrainingSample


class SamplePublic(BaseModel):
    index: int = Field(description="The sample's row in the step's batch.")
    prompt: str
    completion: str = Field(description="The model's text, untrusted: escape it wherever it is shown.")
    reward: float
    sub_rewards: dict[str, float] = Field(description="A multi grader's rewards by name; {} otherwise.")
    truncated: bool = Field(description="The prompt or completion was cut to SPPO_SAMPLE_MAX_CHARS.")

    @classmethod
    def of(cls, row: TrainingSample) -> "SamplePublic":
        return cls(
            index=row.position,
            prompt=row.prompt,
            completion=row.completion,
            reward=row.reward,
            sub_rewards=dict(row.sub_rewards),
            truncated=row.truncated,
        )


class StepSamplesPublic(BaseModel):
    object: Literal["fine_tuning.job.samples"] = "fine_tuning.job.samples"
    step: int
    created_at: int
    samples: list[SamplePublic]

    @classmethod
    def of(cls, step: int, rows: list[TrainingSample]) -> "StepSamplesPublic":
        return cls(step=step, created_at=rows[0].created_at, samples=[SamplePublic.of(r) for r in rows])


class SampleSeriesPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[StepSamplesPublic]
    has_more: bool
    last_step: int | None
