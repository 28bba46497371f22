"""GradingContext.from_dict gives each target its own key: our model server's targets (those with `internal`
fields) its shared secret, an external endpoint's targets the operator's judge key; never the other's."""

import pytest

from grading.context import GradingContext

VALUES = {
    "judges": {
        "ft:sppo-tiny:org::j": {"url": "http://models:8001/internal/generate", "model": "ft:sppo-tiny:org::j",
                                "internal": {"kind": "chat", "base_model": "sppo-tiny"}},
        "gpt-x": {"url": "https://judge.example/v1/chat/completions", "model": "gpt-x"},
    },
    "embeddings": {"url": "http://models:8001/internal/embeddings", "model": "sppo-tiny",
                   "internal": {"base_model": "sppo-tiny"}},
    "api_key_env": "SPPO_JUDGE_API_KEY",
    "model_server_key_env": "SPPO_INFERENCE_SECRET",
}  # fmt: skip


def _keys(context: GradingContext) -> tuple[str | None, str | None, str | None]:
    assert context.embeddings is not None
    return (
        context.judges["ft:sppo-tiny:org::j"].api_key,
        context.judges["gpt-x"].api_key,
        context.embeddings.api_key,
    )


def test_keys_come_from_the_variables_the_values_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPPO_JUDGE_API_KEY", "judge-key")
    monkeypatch.setenv("SPPO_INFERENCE_SECRET", "server-secret")
    assert _keys(GradingContext.from_dict(VALUES)) == ("server-secret", "judge-key", "server-secret")
    external = {**VALUES["embeddings"], "url": "https://e.example/v1/embeddings", "internal": None}  # type: ignore[dict-item]
    context = GradingContext.from_dict({**VALUES, "embeddings": external})
    assert context.embeddings is not None and context.embeddings.api_key == "judge-key"


def test_given_keys_win_and_absent_ones_stay_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPPO_JUDGE_API_KEY", "judge-key")
    monkeypatch.setenv("SPPO_INFERENCE_SECRET", "server-secret")
    given = GradingContext.from_dict(VALUES, api_key="given-judge", model_server_key="given-server")
    assert _keys(given) == ("given-server", "given-judge", "given-server")
    monkeypatch.delenv("SPPO_JUDGE_API_KEY")
    monkeypatch.delenv("SPPO_INFERENCE_SECRET")
    assert _keys(GradingContext.from_dict(VALUES)) == (None, None, None)
