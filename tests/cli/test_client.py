"""`sppo files|jobs|evals` against a live server (no worker: jobs stay queued until controlled)."""

import json
import tarfile
from pathlib import Path

from sqlalchemy import select, update

from core.db import session_scope
from core.models import Checkpoint, Job

from ..app.conftest import REGISTRY_GRADER, REGISTRY_MODEL, Server, add_fine_tuned
from .conftest import Sppo, as_json, run_sppo


def test_upload_create_list_get_and_control(sppo: Sppo, train_file: Path) -> None:
    uploaded = as_json(sppo("files", "upload", str(train_file), "--json"))
    assert uploaded["line_count"] == 8 and uploaded["item_fields"] == ["answer", "messages"]
    listed = sppo("files", "list")
    assert listed.returncode == 0 and uploaded["id"] in listed.stdout and "train.jsonl" in listed.stdout
    assert as_json(sppo("files", "get", uploaded["id"], "--json"))["id"] == uploaded["id"]

    # A local path as --training-file is uploaded first, unless the same content was (as here): reused.
    # Notes go to stderr, JSON to stdout. No --grader: the model's recommended grader.
    created = sppo(
            "jobs", "create", "--model", REGISTRY_MODEL, "--training-file", str(train_file),
            "--algorithm", "grpo", "-H", "batch_size=4", "-H", "n_epochs=auto", "--seed", "3",
            "--metadata", "team=nlp", "--json",
    )  # fmt: skip
    job = as_json(created)
    assert (
        f"already uploaded as {uploaded['id']}" in created.stderr and job["training_file"] == uploaded["id"]
    )
    assert job["method"]["reinforcement"]["grader"] == REGISTRY_GRADER
    assert job["status"] == "queued" and job["seed"] == 3 and job["metadata"] == {"team": "nlp"}
    assert job["method"]["reinforcement"]["algorithm"] == "grpo"
    hyper = job["method"]["reinforcement"]["hyperparameters"]
    assert (hyper["batch_size"], hyper["n_epochs"], hyper["group_size"], hyper["samples_per_step"]) == (
        4,
        1,
        8,
        32,
    )

    table = sppo("jobs", "list")
    assert job["id"] in table.stdout and "queued" in table.stdout and "grpo" in table.stdout
    assert [j["id"] for j in as_json(sppo("jobs", "list", "--json"))["data"]] == [job["id"]]
    shown = sppo("jobs", "get", job["id"])
    assert "batch_size" in shown.stdout and REGISTRY_MODEL in shown.stdout

    assert "paused" in sppo("jobs", "pause", job["id"]).stdout
    paused = sppo("jobs", "watch", job["id"])
    assert paused.returncode == 3 and "paused" in paused.stdout
    assert as_json(sppo("jobs", "resume", job["id"], "--json"))["status"] == "queued"
    assert as_json(sppo("jobs", "cancel", job["id"], "--json"))["status"] == "cancelled"
    watched = sppo("jobs", "watch", job["id"])
    assert watched.returncode == 2 and "cancelled" in watched.stdout


def test_errors_print_the_api_message_not_a_traceback(server: Server, sppo: Sppo, train_file: Path) -> None:
    grader = json.dumps(REGISTRY_GRADER)
    bad_model = sppo(
        "jobs", "create", "--model", "nope", "--training-file", str(train_file), "--grader", grader
    )
    assert bad_model.returncode == 1
    assert (
        "Model 'nope' is not available for fine-tuning; the models are: sppo-tiny, sppo-tiny-long"
        in bad_model.stderr
    )
    assert "Traceback" not in bad_model.stderr + bad_model.stdout

    bad_value = sppo(
        "jobs", "create", "--model", REGISTRY_MODEL, "--training-file", "file-x", "-H", "batch_size=0"
    )
    assert bad_value.returncode == 1 and "method.reinforcement.hyperparameters.batch_size" in bad_value.stderr

    missing = sppo("jobs", "get", "ftjob-missing")
    assert missing.returncode == 1 and "No fine-tuning job with id 'ftjob-missing'" in missing.stderr

    wrong_key = run_sppo(server.base_url, "sk-sppo-wrong", "jobs", "list")
    assert wrong_key.returncode == 1 and "Incorrect API key provided" in wrong_key.stderr
    no_server = run_sppo("http://127.0.0.1:9", "sk-sppo-x", "files", "list")
    assert no_server.returncode == 1 and "cannot reach the server" in no_server.stderr
    assert "Traceback" not in wrong_key.stderr + no_server.stderr


def test_download_unpacks_the_fine_tuned_model_else_the_latest_checkpoint(
    server: Server, sppo: Sppo, train_file: Path, tmp_path: Path
) -> None:
    job = as_json(
        sppo("jobs", "create", "--model", REGISTRY_MODEL, "--training-file", str(train_file), "--json")
    )
    empty = sppo("jobs", "download", job["id"])
    assert empty.returncode == 1 and "has no checkpoints yet" in empty.stderr
    # What the worker leaves behind: checkpoint rows pointing at peft adapter folders.
    with session_scope(server.db_url) as session:
        for step in (2, 4):
            adapter = server.data_dir / "artifacts" / job["id"] / f"step-{step}"
            adapter.mkdir(parents=True)
            (adapter / "adapter_config.json").write_text(f'{{"step": {step}}}')
            (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 1000)
            session.add(
                Checkpoint(
                    job_id=job["id"],
                    step_number=step,
                    fine_tuned_model_checkpoint=f"ckpt-{step}",
                    uri=adapter.relative_to(server.data_dir).as_posix(),  # an artifact key, as workers write
                )
            )
    result = sppo("jobs", "download", job["id"], "--output", "adapter")
    assert result.returncode == 0, result.stderr
    assert "(step 4: the job has no fine-tuned model)" in " ".join(result.stdout.split())
    unpacked = tmp_path / "adapter"
    # The archive names the base model by registry name (not a server path) and carries a model card.
    assert json.loads((unpacked / "adapter_config.json").read_text()) == {
        "step": 4, "base_model_name_or_path": REGISTRY_MODEL
    }  # fmt: skip
    assert f"Base model: `{REGISTRY_MODEL}`" in (unpacked / "README.md").read_text()
    assert (unpacked / "adapter_model.safetensors").stat().st_size == 1000
    again = sppo("jobs", "download", job["id"], "--output", "adapter")  # refused before downloading
    assert again.returncode == 1 and "exists and is not an empty folder" in again.stderr

    # Succeeded with the best checkpoint, step 2, as its model: that is what a plain download takes.
    model = f"ft:{REGISTRY_MODEL}:t::{job['id']}"
    with session_scope(server.db_url) as session:
        session.execute(
            update(Job)
            .where(Job.id == job["id"])
            .values(status="succeeded", fine_tuned_model=model, fine_tuned_model_step=2)
        )
    best = sppo("jobs", "download", job["id"], "--output", "best")
    assert best.returncode == 0, best.stderr
    assert f"(step 2: the fine-tuned model {model})" in " ".join(best.stdout.split())
    assert json.loads((tmp_path / "best" / "adapter_config.json").read_text())["step"] == 2
    shown = " ".join(sppo("jobs", "get", job["id"]).stdout.split())
    assert f"{model} (the checkpoint at step 2)" in shown
    with session_scope(server.db_url) as session:
        latest = session.scalar(
            select(Checkpoint.id).where(Checkpoint.job_id == job["id"], Checkpoint.step_number == 4)
        )
    other = sppo("jobs", "download", job["id"], "--checkpoint", str(latest), "--output", "latest")
    assert other.returncode == 0, other.stderr
    assert "(step 4: not the fine-tuned model, which is the checkpoint at step 2)" in " ".join(
        other.stdout.split()
    )


def test_evals_create_list_get(sppo: Sppo, train_file: Path) -> None:
    created = as_json(
        sppo("evals", "create", "--model", REGISTRY_MODEL, "--file", str(train_file), "--temperature", "0.5",
             "--json")
    )  # fmt: skip
    assert created["status"] == "queued" and created["model"] == REGISTRY_MODEL and created["samples"] == 4
    assert created["temperature"] == 0.5 and created["grader"] == REGISTRY_GRADER
    unset = as_json(sppo("evals", "create", "--model", REGISTRY_MODEL, "--file", str(train_file), "--json"))
    assert unset["temperature"] is None  # the worker resolves the model's training temperature
    shown = sppo("evals", "get", created["id"])
    assert shown.returncode == 0 and created["id"] in shown.stdout and "queued" in shown.stdout
    assert as_json(sppo("evals", "get", created["id"], "--json"))["id"] == created["id"]
    listed = sppo("evals", "list")
    assert listed.returncode == 0 and created["id"] in listed.stdout and unset["id"] in listed.stdout
    no_results = sppo("evals", "results", created["id"])
    assert no_results.returncode == 1 and "has no results (queued)" in no_results.stderr


def test_without_grader_an_unknown_model_is_named(sppo: Sppo, train_file: Path) -> None:
    result = sppo("jobs", "create", "--model", "nope", "--training-file", str(train_file))
    assert (
        result.returncode == 1 and "Model 'nope' is not available; choose one of: sppo-tiny," in result.stderr
    )
    assert "--grader" not in result.stderr  # the model is what is wrong


def test_tar_members_outside_the_target_are_refused(tmp_path: Path) -> None:
    from cli.client import ApiError
    from cli.transfer import _unpack

    archive = tmp_path / "evil.tar.gz"
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    with tarfile.open(archive, "w:gz") as bundle:
        bundle.add(outside, arcname="../escaped.txt")
    try:
        _unpack(archive, tmp_path / "target")
    except (ApiError, tarfile.TarError):
        pass
    else:
        raise AssertionError("a member outside the target was extracted")
    assert not (tmp_path / "escaped.txt").exists()


def test_chat_errors_name_the_cause(sppo: Sppo) -> None:
    unknown = sppo("chat", "no-such-model", "1+2+3=")
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr
    # the API test server runs no model server: the proxy's 503 message reaches the user
    down = sppo("chat", "sppo-tiny", "1+2+3=")
    assert down.returncode == 1 and "(SPPO_INFERENCE_URL) is not reachable" in down.stderr


def test_models_list_shows_base_models_with_context_and_grader(sppo: Sppo) -> None:
    listed = sppo("models", "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "sppo-tiny-long" in line)
    assert "256" in row and "regex" in row  # its context length and recommended grader
    data = as_json(sppo("models", "list", "--json"))["data"]
    assert {"sppo-tiny", "sppo-tiny-long"} <= {m["id"] for m in data}
    assert as_json(sppo("models", "list", "--fine-tuned", "--json"))["data"] == []


def test_a_job_continues_a_fine_tuned_model_and_shows_its_lineage(
    server: Server, key: str, sppo: Sppo, train_file: Path
) -> None:
    parent, _ = add_fine_tuned(server, key, {"peft_type": "LORA", "r": 8, "lora_alpha": 16})
    # no --grader: the base model's recommended grader fits its fine-tuned model
    job = as_json(sppo("jobs", "create", "--model", parent, "--training-file", str(train_file), "--json"))
    assert (job["model"], job["parent_model"], job["base_model"]) == (parent, parent, "sppo-tiny")
    shown = sppo("jobs", "get", job["id"])
    assert shown.returncode == 0 and "(continues its adapter; base model sppo-tiny)" in shown.stdout
