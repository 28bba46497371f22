"""Model judges: `score_model` and `label_model` graders, asked over HTTP.

A judge is reached either at an OpenAI-compatible `<base>/chat/completions` or at our own model server's
`<inference_url>/internal/generate` (`JudgeTarget.internal` holds that server's extra payload fields). All
calls of one `grade` run concurrently (at most `JudgeLimits.concurrency` at a time), each within its timeout.

The judge is told the reply format by a sentence appended to the LAST user message (a new user message at
the end when there is none): JSON `{"result": <number>}` in the range, or `{"label": "<label>"}` naming one
of the labels. A target whose model cannot read it (a tiny context window) sets `format_instruction=False`;
its prompt then asks for the format itself. Replies are parsed leniently (`parse_score`, `parse_label`).
"""

import asyncio
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from grading.result import GradeResult
from jobspec.graders import LabelModelGrader, SamplingParams, ScoreModelGrader
from jobspec.templates import Sample, TemplateValueError, render

REPLY_CHARS = 500  # how much of a reply a result keeps
DETAIL_CHARS = 500
RETRY_STATUSES = (429, 503)
MAX_RETRY_WAIT_S = 2.0
_NUMBER = r"-?(?:\d+(?:\.\d+)?|\.\d+)"
# a number not glued to a word or another number; "7/10" counts as its numerator
_SCORE = re.compile(rf"(?<![\w.])({_NUMBER})(?:\s*/\s*{_NUMBER})?(?!\w|\.\d)")
_EDGES = " \t\r\n\"'`*_.,;:!?()[]{}<>“”‘’«»"  # stripped from a label reply's ends


@dataclass(frozen=True)
class JudgeTarget:
    """Where a judge model is reached."""

    url: str  # `<base>/chat/completions`, or our model server's `<inference_url>/internal/generate`
    model: str  # the model name sent
    api_key: str | None = None  # Bearer key for an external endpoint
    # for our model server: extra payload fields {"kind": "chat", "base_model": ..., "adapter_uri": ...}
    internal: Mapping[str, Any] | None = None
    format_instruction: bool = True  # append the reply-format sentence to the prompt


@dataclass(frozen=True)
class JudgeLimits:
    timeout_s: float = 60.0  # per call, retry included
    concurrency: int = 8
    max_tokens: int = 512  # default when sampling_params has no max_completions_tokens


def _json_objects(reply: str) -> list[dict[str, Any]]:
    """Every JSON object in the reply (a bare one, or one inside prose or a code fence), in order."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    position = reply.find("{")
    while position != -1:
        try:
            value, end = decoder.raw_decode(reply, position)
        except ValueError:
            position = reply.find("{", position + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        position = reply.find("{", end)
    return found


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    numeric = isinstance(value, int | float)
    if not numeric and not (isinstance(value, str) and re.fullmatch(rf"\s*\+?{_NUMBER}\s*", value)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def parse_score(reply: str) -> float | None:
    """The judge's score: `result` (or `score`) of the last JSON object that has a numeric one, else the last
    number in the reply ("7/10" reads as 7); None when there is neither."""
    for obj in reversed(_json_objects(reply)):
        for key in ("result", "score"):
            if (number := _number(obj.get(key))) is not None:
                return number
    numbers = _SCORE.findall(reply)
    return float(numbers[-1]) if numbers else None


def _normal(text: str) -> str:
    return text.strip(_EDGES).casefold()


def _match_label(text: str, labels: Sequence[str]) -> str | None:
    """The one label `text` is (ignoring case, whitespace, quotes and punctuation at the ends)."""
    matches = [label for label in labels if _normal(label) == _normal(text)]
    if len(matches) > 1:  # labels that differ only in case: the exact spelling decides
        matches = [label for label in matches if label.strip() == text.strip(_EDGES)]
    return matches[0] if len(matches) == 1 else None


def parse_label(reply: str, labels: Sequence[str]) -> str | None:
    """The judge's label: `label` (or `result`) of the last JSON object that has a string one, when it names a
    label; else the whole reply, or its last non-empty line, when that is exactly one label."""
    for obj in reversed(_json_objects(reply)):
        for key in ("label", "result"):
            if isinstance(obj.get(key), str):
                return _match_label(obj[key], labels)
    lines = [line for line in reply.splitlines() if line.strip()]
    for candidate in (reply, *lines[-1:]):
        if (label := _match_label(candidate, labels)) is not None:
            return label
    return None


def _retry_after(response: httpx.Response) -> float:
    try:
        wait = float(response.headers.get("retry-after", "1"))
    except ValueError:
        wait = 1.0
    return min(max(wait, 0.0), MAX_RETRY_WAIT_S)


def _error_detail(response: httpx.Response) -> str:
    try:
        message = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = response.text
    return f"HTTP {response.status_code}: {message}"[:DETAIL_CHARS]


class _ServerError(Exception):
    pass


class ModelJudge:
    def __init__(
        self,
        spec: ScoreModelGrader | LabelModelGrader,
        target: JudgeTarget,
        limits: JudgeLimits = JudgeLimits(),  # frozen: a shared default is safe
    ) -> None:
        self.spec, self.target, self.limits = spec, target, limits

    def grade(self, calls: Sequence[tuple[Mapping[str, Any], Sample]]) -> list[GradeResult]:
        """One result per (item, sample), in order. Runs its own event loop: from a thread with a running
        loop it runs in a private thread instead."""
        if not calls:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._grade_all(calls))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="judge") as pool:
            return pool.submit(lambda: asyncio.run(self._grade_all(calls))).result()

    async def _grade_all(self, calls: Sequence[tuple[Mapping[str, Any], Sample]]) -> list[GradeResult]:
        semaphore = asyncio.Semaphore(self.limits.concurrency)
        headers = {"Authorization": f"Bearer {self.target.api_key}"} if self.target.api_key else None
        pool = httpx.Limits(max_connections=self.limits.concurrency)
        async with httpx.AsyncClient(timeout=self.limits.timeout_s, limits=pool, headers=headers) as client:
            return list(await asyncio.gather(*(self._grade_one(client, semaphore, *call) for call in calls)))

    def messages(self, item: Mapping[str, Any], sample: Sample) -> list[dict[str, str]]:
        """The rendered chat messages (TemplateValueError when a template has no value for this item)."""
        messages = []
        for message in self.spec.input:
            role = (
                "system" if message.role == "developer" and self.target.internal is not None else message.role
            )
            text = "\n".join(render(template, item, sample) for template in message.templates())
            messages.append({"role": role, "content": text})
        if self.target.format_instruction:
            users = [i for i, message in enumerate(messages) if message["role"] == "user"]
            if users:
                messages[users[-1]]["content"] += "\n\n" + self.instruction()
            else:
                messages.append({"role": "user", "content": self.instruction()})
        return messages

    def instruction(self) -> str:
        if isinstance(self.spec, ScoreModelGrader):
            low, high = self.spec.bounds
            return (f"Give your score as a number from {low:g} to {high:g}. Reply with only a JSON object: "
                    '{"result": <number>}')  # fmt: skip
        labels = ", ".join(json.dumps(label) for label in self.spec.labels)
        return (f"Answer with exactly one of these labels: {labels}. Reply with only a JSON object: "
                '{"label": "<label>"}')  # fmt: skip

    def payload(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        params = self.spec.sampling_params or SamplingParams()
        body: dict[str, Any] = {"model": self.target.model, "messages": messages}
        max_tokens = params.max_completions_tokens or self.limits.max_tokens
        for name in ("temperature", "top_p", "seed"):
            if getattr(params, name) is not None:
                body[name] = getattr(params, name)
        if self.target.internal is not None:
            # unset, our model server answers within the model's context (a default could exceed it)
            budget = params.max_completions_tokens
            body.update({"kind": "chat", "n": 1, **self.target.internal, "max_tokens": budget})
        else:  # OpenAI's name; reasoning models refuse `max_tokens`
            body["max_completion_tokens"] = max_tokens
            if params.reasoning_effort is not None:
                body["reasoning_effort"] = params.reasoning_effort
        return body

    async def _grade_one(
        self, client: httpx.AsyncClient, semaphore: asyncio.Semaphore, item: Mapping[str, Any], sample: Sample
    ) -> GradeResult:
        try:
            messages = self.messages(item, sample)
        except TemplateValueError as exc:
            return GradeResult.failed(exc.flag, str(exc))
        async with semaphore:
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.limits.timeout_s):
                    answer = await self._post(client, self.payload(messages))
            except TimeoutError:
                detail = f"the judge did not answer within {self.limits.timeout_s:g} s"
                return GradeResult.failed("model_grader_server_error", detail,
                                          execution_time=time.monotonic() - started)  # fmt: skip
            except _ServerError as exc:
                return GradeResult.failed("model_grader_server_error", str(exc),
                                          execution_time=time.monotonic() - started)  # fmt: skip
        result = self._judge(answer)
        result.execution_time = time.monotonic() - started
        return result

    async def _post(self, client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
        """The chat.completion answer; _ServerError for an HTTP error, an unreachable or unreadable server."""
        for attempt in range(2):
            try:
                response = await client.post(self.target.url, json=body)
            except httpx.TimeoutException:
                raise TimeoutError from None
            except httpx.HTTPError as exc:
                raise _ServerError(f"{type(exc).__name__}: {exc}"[:DETAIL_CHARS]) from None
            if response.status_code in RETRY_STATUSES and attempt == 0:
                await asyncio.sleep(_retry_after(response))
                continue
            if response.status_code != 200:
                raise _ServerError(_error_detail(response))
            try:
                answer = response.json()
                answer["choices"][0]["message"]
            except (ValueError, KeyError, IndexError, TypeError):
                raise _ServerError(
                    f"HTTP 200 without a chat completion: {response.text}"[:DETAIL_CHARS]
                ) from None
            if not isinstance(answer, dict):
                raise _ServerError("HTTP 200 without a chat completion")
            return answer
        raise AssertionError("unreachable")

    def _judge(self, answer: dict[str, Any]) -> GradeResult:
        """The grade a chat.completion answer gives."""
        message = answer["choices"][0]["message"]
        message = message if isinstance(message, dict) else {}
        content = message.get("content")
        reply = content if isinstance(content, str) else ""
        usage = answer.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        tokens = sum(
            usage[k] for k in ("prompt_tokens", "completion_tokens") if isinstance(usage.get(k), int)
        )
        extra: dict[str, Any] = {"token_usage": tokens, "scores": {"reply": reply[:REPLY_CHARS]}}
        if message.get("refusal"):
            return _parse_error(f"the judge refused: {message['refusal']}", extra)
        if isinstance(self.spec, LabelModelGrader):
            label = parse_label(reply, self.spec.labels)
            if label is None:
                return _parse_error(f"the reply names none of the labels {self.spec.labels}", extra)
            reward = 1.0 if label in self.spec.passing_labels else 0.0
            return GradeResult(reward, scores={"label": label}, token_usage=tokens)
        low, high = self.spec.bounds
        score = parse_score(reply)
        if score is None or not low <= score <= high:
            found = "no score" if score is None else f"the score {score:g}"
            return _parse_error(f"{found} in the reply; expected a number from {low:g} to {high:g}", extra)
        reward = min(1.0, max(0.0, (score - low) / (high - low)))
        return GradeResult(reward, scores={"score": score, "reply": reply[:REPLY_CHARS]}, token_usage=tokens)


def _parse_error(detail: str, extra: dict[str, Any]) -> GradeResult:
    return GradeResult.failed("model_grader_parse_error", detail[:DETAIL_CHARS], **extra)
