"""Jobs whose reward is more than a string check: a multi grader of a sandboxed Python grader with partial
credit and a string check, through the SDK, to `succeeded`, with its sub-rewards as series of their own."""

import csv
import io

import httpx
import openai
import pytest

from grading.sandbox import sandbox_unavailable_reason
from tests.e2e.conftest import Stack, jsonl, wait_for
from worker.engine.fixture_tasks import CLOSENESS_GRADER
from worker.engine.fixtures import FIXTURE_GRADER, Fixture

MULTI = {
    "type": "multi",
    "name": "answer",
    "graders": {
        "closeness": CLOSENESS_GRADER,
        "exact": FIXTURE_GRADER,
    },
    "calculate_output": "0.5 * closeness + 0.5 * exact",
}
STEPS = 2


def test_a_multi_grader_with_a_python_sub_grader_trains_to_succeeded(
    stack: Stack, key: str, tiny: Fixture
) -> None:
    if sandbox_unavailable_reason() is not None:
        pytest.skip(f"no sandbox for Python graders here: {sandbox_unavailable_reason()}")
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)
    train = client.files.create(file=("train.jsonl", jsonl(tiny.train_file, 0, 16)), purpose="fine-tune")
    valid = client.files.create(file=("valid.jsonl", jsonl(tiny.validation_file, 0, 8)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="sppo-tiny",
        training_file=train.id,
        validation_file=valid.id,
        method={  # type: ignore[arg-type]
            "type": "reinforcement",
            "reinforcement": {
                "grader": MULTI,
                "hyperparameters": {
                    "batch_size": 8,
                    "n_epochs": 1,
                    "eval_samples": 1,
                    "pass_threshold": 0.75,
                },
            },
        },
        seed=3,
    )
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"}) as api:
        done = wait_for(api, job.id, lambda j: j["status"] in ("succeeded", "failed", "cancelled"))
        assert done["status"] == "succeeded", done["error"]
        series = api.get(f"/v1/fine_tuning/jobs/{job.id}/metrics", params={"limit": 100}).json()["data"]
        kept = api.get(f"/v1/fine_tuning/jobs/{job.id}/samples", params={"limit": 100}).json()["data"]
    # what the policy wrote: the worker's default 4 samples of every step, each with its sub-rewards
    assert [(s["step"], len(s["samples"])) for s in kept] == [(step, 4) for step in range(1, STEPS + 1)]
    for sample in (sample for s in kept for sample in s["samples"]):
        assert set(sample["sub_rewards"]) == {"closeness", "exact"} and sample["completion"] is not None
        combined = 0.5 * sample["sub_rewards"]["closeness"] + 0.5 * sample["sub_rewards"]["exact"]
        assert sample["reward"] == pytest.approx(combined, abs=1e-6)
    steps = [point["metrics"] for point in series if point["step"] > 0]
    assert len(steps) == STEPS
    for metrics in steps:
        assert metrics["grader/error_rate"] == 0
        assert metrics["perf/grading_s"] > 0
        # the formula combines the sub-rewards exactly, so their means do too
        combined = 0.5 * metrics["reward/closeness"] + 0.5 * metrics["reward/exact"]
        assert metrics["rollout/reward_mean"] == pytest.approx(combined, abs=1e-6)
    assert "eval/reward_mean" in series[0]["metrics"]
    rows = list(csv.DictReader(io.StringIO(client.files.content(done["result_files"][0]).text)))
    assert {"reward/closeness", "reward/exact", "grader/error_rate"} <= set(rows[0])


def test_model_judges_through_the_sdk_on_this_services_model_server(stack: Stack, key: str) -> None:
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)
    # sppo-tiny answers arithmetic: as a judge its last number is the score (its 64-position context takes
    # no format instruction, so the prompt is the question itself)
    score = {
        "type": "score_model",
        "name": "judge",
        "model": "sppo-tiny",
        "range": [0, 1000],
        "input": [{"role": "user", "content": "{{item.question}}"}],
        "sampling_params": {"temperature": 0, "max_completions_tokens": 40},
    }
    result = client.fine_tuning.alpha.graders.run(
        grader=score,  # type: ignore[arg-type]
        model_sample="",
        item={"question": "36+13+46="},
    )
    assert not result.metadata.errors.model_grader_server_error, result.metadata.errors
    assert not result.metadata.errors.model_grader_parse_error, result.metadata.scores
    assert result.reward == result.metadata.scores["score"] / 1000
    assert result.metadata.token_usage and result.metadata.token_usage > 10
    assert result.model_grader_token_usage_per_model == {
        "sppo-tiny": {"total_tokens": result.metadata.token_usage}
    }
    label = {
        "type": "label_model",
        "name": "yes_no",
        "model": "sppo-tiny",
        "labels": ["yes", "no"],
        "passing_labels": ["yes"],
        "input": [{"role": "user", "content": "{{item.question}}"}],
        "sampling_params": {"temperature": 0, "max_completions_tokens": 40},
    }
    unlabelled = client.fine_tuning.alpha.graders.run(
        grader=label,  # type: ignore[arg-type]
        model_sample="",
        item={"question": "11+22+33="},
    )
    assert unlabelled.reward == 0.0 and unlabelled.metadata.errors.model_grader_parse_error
    other_tenant_model = "ft:sppo-tiny:tenant-00000000:x:ftjob-none"
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.alpha.graders.run(
            grader={**score, "model": other_tenant_model},  # type: ignore[arg-type]
            model_sample="",
            item={"question": "1+2+3="},
        )
    assert refused.value.param == "grader.model"
