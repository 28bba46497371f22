"""The official SDK creates a job with `integrations`; the worker logs the run to W&B (offline files in the
data dir) and to a real MLflow server, and both hold every step's metrics and the evaluation scores."""

import json
from pathlib import Path

import openai

from tests.conftest import mlflow_metrics, mlflow_server, wandb_history
from worker.engine.fixtures import Fixture
from worker.trackers import mlflow_name

from .conftest import Stack, jsonl, sppo_method, wait_for

BATCH, TRAIN_ITEMS = 4, 8  # two steps: the smallest job that trains, evaluates and finishes


def test_a_job_logs_to_wandb_and_mlflow(stack: Stack, key: str, tiny: Fixture, tmp_path: Path) -> None:
    [allowed] = json.loads(stack.env["SPPO_MLFLOW_TRACKING_URIS"])
    with mlflow_server(tmp_path / "mlflow", int(allowed.rsplit(":", 1)[1])) as mlflow_url:
        client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)
        train = client.files.create(
            file=("t.jsonl", jsonl(tiny.train_file, 0, TRAIN_ITEMS)), purpose="fine-tune"
        )
        valid = client.files.create(file=("v.jsonl", jsonl(tiny.validation_file, 0, 4)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="sppo-tiny",
            training_file=train.id,
            validation_file=valid.id,
            method=sppo_method(batch_size=BATCH, eval_interval=2, eval_samples=1),  # type: ignore[arg-type]
            integrations=[
                {"type": "wandb", "wandb": {"project": "e2e", "tags": ["sdk"]}},
                {"type": "mlflow", "mlflow": {"experiment": "e2e", "run_name": "sdk"}},  # type: ignore[list-item, typeddict-item]
            ],
        )
        assert job.integrations and job.integrations[0].wandb.project == "e2e"
        with stack.client(key) as api:
            done = wait_for(api, job.id, lambda j: j["status"] in ("succeeded", "failed", "cancelled"))
            assert done["status"] == "succeeded", done
            events = [
                e["message"]
                for e in api.get(f"/v1/fine_tuning/jobs/{job.id}/events?limit=100").json()["data"]
            ]
        assert not [m for m in events if "logging stopped" in m], events

        steps = {row["_step"]: row for row in wandb_history(stack.data_dir / "trackers" / job.id)}
        assert {0, 1, 2} <= set(steps)
        assert "rollout/reward_mean" in steps[1] and "train/policy_loss" in steps[2]
        assert "eval/pass@1" in steps[0] and "eval/pass@1" in steps[2]  # the base model's score, the last one
        assert "samples/_type" in steps[1]  # the policy's samples as a table

        series = mlflow_metrics(mlflow_url, "e2e")
        assert set(series["train/policy_loss"]) == {1, 2}
        assert set(series[mlflow_name("eval/pass@1")]) == {0, 2}
