"""A small random Llama of sppo-tiny's architecture in a registry, and two random LoRA adapters of it under
`jobs/`, in a data directory the model server's tests share; the model server's app on it, called with its
secret."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from peft import LoraConfig, get_peft_model

from core.settings import Settings
from inference.server import create_app
from worker.engine.fixture_build import build_model, build_tokenizer

SECRET = "model-server-test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inference")
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), 64, seed=3)
    model.save_pretrained(root / "models" / "rand-tiny")
    tokenizer.save_pretrained(root / "models" / "rand-tiny")
    for seed, name in ((1, "a"), (2, "b")):
        base = build_model(len(tokenizer), 64, seed=3)  # reseeds torch itself: the adapter's seed comes after
        torch.manual_seed(seed)
        lora = LoraConfig(
            r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False
        )
        get_peft_model(base, lora).save_pretrained(root / "jobs" / name)
    return root


@pytest.fixture(scope="module")
def client(data_dir: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=data_dir, inference_secret=SECRET)  # type: ignore[call-arg]
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {SECRET}"}) as test_client:
        yield test_client
