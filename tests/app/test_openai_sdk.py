"""The official `openai` SDK drives files and fine-tuning jobs against the live server unchanged."""

import json
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from .conftest import ITEM, Server, add_fine_tuned, method


def test_sdk_files_and_jobs(server: Server, key: str, tmp_path: Path) -> None:
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    path = tmp_path / "train.jsonl"
    path.write_text(ITEM * 4)

    file = client.files.create(file=path.open("rb"), purpose="fine-tune")
    assert file.id.startswith("file-") and file.bytes == path.stat().st_size and file.status == "processed"
    assert client.files.retrieve(file.id).filename == "train.jsonl"
    assert client.files.content(file.id).read() == path.read_bytes()
    assert file.id in [f.id for f in client.files.list()]

    # The SDK's typed `method` accepts the reinforcement method; `algorithm` and the math/regex graders
    # are extensions, which it passes through as plain dict keys.
    created = [
        client.fine_tuning.jobs.create(
            model="sppo-tiny",
            training_file=file.id,
            method=method(batch_size=4),
            seed=3,
            metadata={"i": str(i)},
        )
        for i in range(3)
    ]
    job = created[0]
    assert job.status == "queued" and job.seed == 3 and job.method is not None
    assert job.method.type == "reinforcement"

    page = client.fine_tuning.jobs.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    everything = [j.id for j in client.fine_tuning.jobs.list(limit=2)]  # auto-pagination via `after`
    assert sorted(everything) == sorted(j.id for j in created)
    only = client.fine_tuning.jobs.list(metadata={"i": "1"})
    assert [j.id for j in only.data] == [created[1].id]

    assert client.fine_tuning.jobs.retrieve(job.id).id == job.id
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    events = client.fine_tuning.jobs.list_events(job.id, limit=10)
    assert [e.message for e in events.data] == ["Job cancelled by the user", "Created fine-tuning job"]
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []

    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(
            model="sppo-tiny", training_file=file.id, method=method(), extra_body={"epochs": 3}
        )
    assert bad.value.param == "epochs"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-missing")
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{server.base_url}/v1", api_key="sk-wrong", max_retries=0).models.list()
    assert "sppo-tiny" in [m.id for m in client.models.list()]


def test_sdk_data_and_hyperparameter_shapes(server: Server, key: str, tmp_path: Path) -> None:
    """OpenAI's content-part messages upload, and every value of the SDK's reinforcement hyperparameters
    that was a 400 before (`compute_multiplier`, `reasoning_effort: "default"`) creates a job."""
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    path = tmp_path / "parts.jsonl"
    parts = [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+3?"}]
    path.write_text(json.dumps({"messages": [{"role": "user", "content": parts}], "answer": "5"}) + "\n")
    file = client.files.create(file=path.open("rb"), purpose="fine-tune")
    for compute_multiplier, reasoning_effort, resolved in ((2.0, "default", 2.0), ("auto", "high", 1.0)):
        # the model's 64 positions hold no 16,384-token "high" budget: the job's own budget takes precedence
        hyperparameters = {"compute_multiplier": compute_multiplier, "reasoning_effort": reasoning_effort,
                           "max_response_tokens": 16}  # fmt: skip
        job = client.fine_tuning.jobs.create(
            model="sppo-tiny", training_file=file.id, method=method(batch_size=1, **hyperparameters)
        )
        assert job.method is not None and job.method.reinforcement is not None
        given = job.method.reinforcement.hyperparameters
        assert given is not None
        assert (given.compute_multiplier, given.reasoning_effort) == (resolved, reasoning_effort)
        client.fine_tuning.jobs.cancel(job.id)  # within the tenant's concurrent-jobs quota


def test_sdk_continues_a_fine_tuned_model(server: Server, key: str, tmp_path: Path) -> None:
    """`model="ft:..."` creates a job that continues the tenant's model; the lineage is the job's extra
    fields; another tenant's model is the SDK's NotFoundError."""
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    path = tmp_path / "train.jsonl"
    path.write_text(ITEM * 4)
    file = client.files.create(file=path.open("rb"), purpose="fine-tune")
    lora = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["v_proj"]}
    parent, _ = add_fine_tuned(server, key, lora)
    job = client.fine_tuning.jobs.create(model=parent, training_file=file.id, method=method(batch_size=4))
    assert job.model == parent and job.status == "queued"
    assert (job.model_extra or {})["parent_model"] == parent and (job.model_extra or {})[
        "base_model"
    ] == "sppo-tiny"
    theirs, _ = add_fine_tuned(server, server.new_key(), lora)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model=theirs, training_file=file.id, method=method(batch_size=4))
