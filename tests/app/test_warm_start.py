"""A job that continues a fine-tuned model or checkpoint of its tenant: accepted by every name the model has,
its lineage shown; another tenant's, a deleted or an unknown model is one 404; the parent's adapter config
wins over a conflicting setting (400)."""

from typing import Any

import httpx
import pytest

from .conftest import GRADER, Server, add_checkpoint, add_fine_tuned, assert_error, method

LORA = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["v_proj"]}


def _body(training_file: str, model: str, **hyperparameters: Any) -> dict[str, Any]:
    return {"model": model, "training_file": training_file, "method": method(batch_size=8, **hyperparameters)}


def _create(api: httpx.Client, training_file: str, model: str) -> httpx.Response:
    return api.post("/v1/fine_tuning/jobs", json=_body(training_file, model))


@pytest.fixture
def training_file(upload: Any) -> str:
    return str(upload()["id"])


def test_a_fine_tuned_model_of_the_tenant_is_continued(
    server: Server, key: str, api: httpx.Client, training_file: str
) -> None:
    parent, _ = add_fine_tuned(server, key, LORA)
    response = _create(api, training_file, parent)
    assert response.status_code == 200, response.text
    job = response.json()
    assert (job["model"], job["base_model"], job["parent_model"]) == (parent, "sppo-tiny", parent)
    hyper = job["method"]["reinforcement"]["hyperparameters"]
    assert (hyper["lora_rank"], hyper["lora_alpha"]) == (8, 16)  # the parent's adapter, not the defaults
    assert job["method"]["reinforcement"]["grader"] == GRADER
    events = api.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
    assert any(f"continues the adapter of '{parent}'" in e["message"] for e in events)
    fresh = _create(api, training_file, "sppo-tiny").json()
    assert (fresh["base_model"], fresh["parent_model"]) == ("sppo-tiny", None)


def test_a_checkpoint_is_continued_by_its_id_or_its_name(
    server: Server, key: str, api: httpx.Client, training_file: str
) -> None:
    parent, _ = add_fine_tuned(server, key, LORA)
    checkpoint_id, _ = add_checkpoint(server, parent, {**LORA, "r": 4})
    for name in (checkpoint_id, f"{parent}:ckpt-step-10"):
        response = _create(api, training_file, name)
        assert response.status_code == 200, response.text
        job = response.json()
        assert (job["model"], job["base_model"], job["parent_model"]) == (name, "sppo-tiny", name)
        assert job["method"]["reinforcement"]["hyperparameters"]["lora_rank"] == 4


@pytest.mark.parametrize("name", ["no-such-model", "../../etc", "not-a-model"])  # the last: no config.json
def test_a_name_outside_the_registry_is_404_listing_the_models(
    api: httpx.Client, training_file: str, name: str
) -> None:
    error = assert_error(_create(api, training_file, name), 404, "model")
    assert error["code"] == "model_not_found" and "sppo-tiny" in error["message"]


def test_another_tenants_deleted_or_unknown_model_is_one_404(
    server: Server, key: str, api: httpx.Client, training_file: str
) -> None:
    theirs, _ = add_fine_tuned(server, server.new_key(), LORA)
    their_checkpoint, _ = add_checkpoint(server, theirs, LORA)
    deleted, _ = add_fine_tuned(server, key, LORA)
    assert api.delete(f"/v1/models/{deleted}").status_code == 200
    messages = []
    for name in (theirs, their_checkpoint, f"{theirs}:ckpt-step-10", deleted, "ft:sppo-tiny:x::ftjob-none"):
        error = assert_error(_create(api, training_file, name), 404, "model")
        assert error["code"] == "model_not_found"
        messages.append(error["message"].replace(name, "NAME"))
    assert len(set(messages)) == 1  # nothing tells another tenant's model from one that does not exist


def test_the_parents_adapter_config_wins(
    server: Server, key: str, api: httpx.Client, training_file: str
) -> None:
    parent, _ = add_fine_tuned(server, key, LORA)
    for name, value in (("lora_rank", 16), ("lora_alpha", 8)):
        response = api.post("/v1/fine_tuning/jobs", json=_body(training_file, parent, **{name: value}))
        error = assert_error(response, 400, f"method.reinforcement.hyperparameters.{name}")
        assert parent in error["message"] and "leave" in error["message"]
    same = api.post("/v1/fine_tuning/jobs", json=_body(training_file, parent, lora_rank=8, lora_alpha=16))
    assert same.status_code == 200, same.text


def test_a_parent_without_a_lora_adapter_is_refused(
    server: Server, key: str, api: httpx.Client, training_file: str
) -> None:
    trained_in_full, adapter = add_fine_tuned(server, key, LORA)
    (adapter / "adapter_config.json").unlink()  # what a fully fine-tuned policy leaves: no adapter config
    error = assert_error(_create(api, training_file, trained_in_full), 400, "model")
    assert "trained in full" in error["message"]
    other_kind, _ = add_fine_tuned(server, key, {**LORA, "peft_type": "IA3"})
    error = assert_error(_create(api, training_file, other_kind), 400, "model")
    assert "LoRA" in error["message"]
