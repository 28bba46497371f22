"""Which base model and adapter a tenant's model name means: the one resolution the chat proxy, the
evaluations API and model-judge graders share (no HTTP layer here, so the worker may use it too).

Names: a registry base model; the tenant's fine-tuned model (`ft:...`); a checkpoint of the tenant's job by
its id (`ftckpt-...`) or by the name it advertises (`ft:...:ckpt-step-N`).
"""

from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.models import Checkpoint, FineTunedModel, Job
from core.registry import find_base_model
from core.settings import Settings


@dataclass(frozen=True)
class ModelTarget:
    model: str  # the public id, echoed in responses
    base_model: str
    adapter_uri: str | None


def find_model_target(
    session: Session, *, settings: Settings, tenant_id: str, model: str
) -> ModelTarget | None:
    """The target of a name this tenant may use, or None."""
    if find_base_model(settings, model) is not None:
        return ModelTarget(model, model, None)
    row = session.scalar(
        select(FineTunedModel).where(FineTunedModel.id == model, FineTunedModel.tenant_id == tenant_id)
    )
    if row is not None:
        return ModelTarget(model, row.base_model, row.adapter_uri)
    found = session.execute(
        select(Checkpoint.uri, Job.base_model)
        .join(Job, Job.id == Checkpoint.job_id)
        .where(
            or_(Checkpoint.id == model, Checkpoint.fine_tuned_model_checkpoint == model),
            Job.tenant_id == tenant_id,
        )
    ).first()
    if found is not None:
        return ModelTarget(model, found.base_model, found.uri)
    return None
