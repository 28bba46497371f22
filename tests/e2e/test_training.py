"""The main path, through the official openai SDK: upload, create an SPPO job on sppo-tiny, follow its live
metrics until it succeeds, read events and checkpoints, download the adapter, load it with peft and check
that it scores what the job reported. Then score the fine-tuned model with the evaluations API."""

import csv
import io
import json
import re
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.e2e.conftest import Stack, jsonl, metric_steps, sppo_method
from worker.engine.config import model_defaults
from worker.engine.fixtures import FIXTURE_GRADER, Fixture

# Real training on a shared CPU: generous limits, so a loaded machine slows these tests down only.
pytestmark = pytest.mark.timeout(1800)

TRAIN_ITEMS, VALIDATION_ITEMS, BATCH = 32, 16, 8
STEPS = TRAIN_ITEMS // BATCH
ANSWER = re.compile(r"####\s*(-?\d+)")


def follow(stack: Stack, key: str, job_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read metrics/stream to its end: (metric records, end event)."""
    records: list[dict[str, Any]] = []
    url = f"{stack.base_url}/v1/fine_tuning/jobs/{job_id}/metrics/stream"
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(30, read=60)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event: dict[str, str] = {}
        for line in response.iter_lines():
            if line:
                name, _, value = line.partition(": ")
                event[name] = value
                continue
            if event.get("event") == "metrics":
                records.append({"id": event["id"], **json.loads(event["data"])})
            elif event.get("event") == "end":
                return records, json.loads(event["data"])
            event = {}
    raise AssertionError("the stream closed without an end event")


def greedy_accuracy(model: torch.nn.Module, tokenizer: Any, items: list[dict[str, Any]]) -> float:
    """Plain transformers generation, one left-padded batch, scored like the fixture's regex grader."""
    prompts = [
        tokenizer.apply_chat_template(item["messages"], add_generation_prompt=True, tokenize=False)
        for item in items
    ]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, add_special_tokens=False, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
    completions = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    correct = 0
    for item, completion in zip(items, completions, strict=True):
        found = ANSWER.findall(completion)
        correct += bool(found) and found[-1].strip() == item["answer"]
    return correct / len(items)


def test_sppo_job_end_to_end(stack: Stack, key: str, tiny: Fixture, tmp_path: Path) -> None:
    started = time.monotonic()
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)
    validation = jsonl(tiny.validation_file, 0, VALIDATION_ITEMS)
    train_file = client.files.create(file=("train.jsonl", jsonl(tiny.train_file, 0, TRAIN_ITEMS)),
                                     purpose="fine-tune")  # fmt: skip
    validation_file = client.files.create(file=("valid.jsonl", validation), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="sppo-tiny",
        training_file=train_file.id,
        validation_file=validation_file.id,
        # A small learning rate keeps the policy near the base model's accuracy (~25%), so comparing the
        # downloaded adapter's accuracy with the reported one is not a trivial 0 == 0 after a collapse.
        method=sppo_method(batch_size=BATCH, eval_interval=2, learning_rate_multiplier=0.1),  # type: ignore[arg-type]
        seed=7,
        suffix="e2e",
    )
    assert job.status in ("queued", "running")  # an idle worker may claim it before the API answers

    records, end = follow(stack, key, job.id)
    assert end == {"status": "succeeded"}
    assert [r["step"] for r in records] == list(range(0, STEPS + 1))  # step 0: the base model's score
    assert "eval/pass@1" in records[0]["metrics"]
    assert {"rollout/reward_mean", "train/policy_loss", "perf/tokens_per_s"} <= set(records[1]["metrics"])
    # Resumable: after the second record's id the stream sends the rest.
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"}) as api:
        response = api.get(
            f"/v1/fine_tuning/jobs/{job.id}/metrics/stream", headers={"Last-Event-ID": records[1]["id"]}
        )
        assert response.text.count("event: metrics") == STEPS - 1

        job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded", job.error
        assert re.fullmatch(rf"ft:sppo-tiny:tenant-[0-9a-f]{{8}}:e2e:{job.id}", job.fine_tuned_model or "")
        assert job.trained_tokens and job.trained_tokens > 0
        assert metric_steps(api, job.id) == list(range(0, STEPS + 1))
        resolved = job.method.reinforcement.hyperparameters  # type: ignore[union-attr]
        assert resolved.batch_size == BATCH and resolved.learning_rate_multiplier == 0.1
        expected_lr = model_defaults(tiny.model_dir)["learning_rate"] * 0.1  # the model's default × 0.1
        assert resolved.model_extra and abs(resolved.model_extra["learning_rate"] - expected_lr) < 1e-12
        assert resolved.model_extra["model_selection"] == "best"
        assert resolved.model_extra["early_stopping_patience"] is None

        # Result file: the step metrics as CSV, through the Files API.
        rows = list(csv.DictReader(io.StringIO(client.files.content(job.result_files[0]).text)))
        assert [int(r["step"]) for r in rows] == list(range(0, STEPS + 1))

        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert any(m.startswith("Training started") for m in messages)
        assert any(m.startswith("Evaluation at step 0") for m in messages)
        assert any(m.startswith("Evaluation at step 2") for m in messages)
        assert any(m.startswith(f"Checkpoint saved at step {STEPS}") for m in messages)

        # Every evaluation (steps 2 and 4) is a checkpoint; the model is the best of them (model_selection
        # best, the default), the earlier on a tie, and the job and its succeeded event say which.
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [c.step_number for c in checkpoints] == [STEPS, 2]  # newest first
        scores = {c.step_number: (c.metrics.model_extra or {})["eval/pass@1"] for c in checkpoints}
        model_step = (job.model_extra or {})["fine_tuned_model_step"]
        assert model_step == (2 if scores[2] >= scores[STEPS] else STEPS), scores
        succeeded = (
            "The job has successfully completed; the fine-tuned model is the checkpoint at step "
            f"{model_step} (eval/pass@1 {scores[model_step]:.3f})"
        )
        assert succeeded in messages, messages
        final = next(c for c in checkpoints if c.step_number == model_step)
        reported = final.metrics.model_extra or {}
        assert final.fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-{model_step}"
        assert job.fine_tuned_model in [m.id for m in client.models.list()]

        # The adapter: download, extract, load with peft on the base model, generate, score.
        response = api.get(f"/v1/fine_tuning/jobs/{job.id}/checkpoints/{final.id}/adapter")
        assert response.status_code == 200, response.text
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
            archive.extractall(tmp_path, filter="data")
        adapter_dir = tmp_path / final.id
        assert (adapter_dir / "adapter_config.json").is_file()
        with stack.client(stack.new_key()) as stranger:  # another tenant sees none of it
            for path in (f"checkpoints/{final.id}/adapter", "metrics", "metrics/stream", "checkpoints"):
                assert stranger.get(f"/v1/fine_tuning/jobs/{job.id}/{path}").status_code == 404
        after = api.get(f"/v1/fine_tuning/jobs/{job.id}/metrics", params={"after_step": 2}).json()
        assert [p["step"] for p in after["data"]] == list(range(3, STEPS + 1)) and after["last_step"] == STEPS
        tokenizer = AutoTokenizer.from_pretrained(tiny.model_dir)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny.model_dir), adapter_dir)
        items = [json.loads(line) for line in validation.splitlines()]
        accuracy = greedy_accuracy(model.eval(), tokenizer, items)
        print(
            f"downloaded adapter: greedy accuracy {accuracy:.4f}, job reported {reported['eval/pass@1']:.4f}"
        )
        assert abs(accuracy - reported["eval/pass@1"]) <= 1 / VALIDATION_ITEMS + 1e-9

        # The same model through the evaluations API: the engine's own scoring gives the same pass@1.
        created = api.post(
            "/v1/evaluations",
            json={"model": job.fine_tuned_model, "file": validation_file.id, "grader": FIXTURE_GRADER,
                  "samples": 2, "temperature": 1.0},
        )  # fmt: skip
        assert created.status_code == 200, created.text
        evaluation = _wait_evaluation(api, created.json()["id"])
        assert evaluation["status"] == "succeeded", evaluation
        print(f"evaluations API pass@1 {evaluation['scores']['eval/pass@1']:.4f}")
        assert (
            abs(evaluation["scores"]["eval/pass@1"] - reported["eval/pass@1"]) <= 1 / VALIDATION_ITEMS + 1e-9
        )
        assert "eval/avg@2" in evaluation["scores"]
        results = api.get(evaluation["results_url"]).text.splitlines()
        assert len(results) == VALIDATION_ITEMS
        assert [e["id"] for e in api.get("/v1/evaluations").json()["data"]] == [evaluation["id"]]
    print(f"end-to-end test took {time.monotonic() - started:.1f}s")


def _wait_evaluation(api: httpx.Client, evaluation_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        evaluation: dict[str, Any] = api.get(f"/v1/evaluations/{evaluation_id}").json()
        if evaluation["status"] in ("succeeded", "failed"):
            return evaluation
        assert time.monotonic() < deadline, evaluation
        time.sleep(0.5)
