"""Model judges: `score_model` and `label_model` graders, asked over HTTP.

A judge is reached either at an OpenAI-compatible `<base>/chat/completions` or at our own model server's
`<inference_url>/internal/generate` (`JudgeTarget.internal` holds that server's extra payload fields). All
calls of one `grade` run concurrently (at most `JudgeLimits.concurrency` at a time), each within its timeout.

The judge is told the reply format by a sentence appended to the LAST user message (a new user message at
the end when there is none): JSON `{"result": <number>}` in the range, or `{"label": "<label>"}` naming one
of the labels. A target whose model cannot read it (a tiny context window) sets `format_instruction=False`;
its prompt then asks for the format itself. Replies are parsed leniently (`parse_score`, `parse_label`);
one that gives no answer is a refusal when the endpoint says so (OpenAI's `message.refusal`) or the reply
opens like one ("I'm sorry", "I cannot", ...), else a parse error. No reply or HTTP outcome escapes `grade`:
each call's failure is that call's result.
"""

import asyncio
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from grading.http import (
    DETAIL_CHARS,
    UNREACHABLE,
    auth_headers,
    error_detail,
    json_body,
    retry_wait,
    unreachable_detail,
)
from grading.result import GradeResult
from jobspec.graders import LabelModelGrader, SamplingParams, ScoreModelGrader
from jobspec.templates import Sample, TemplateValueError, render

REPLY_CHARS = 500  # how much of a reply a result keeps
_NUMBER = r"-?(?:\d+(?:\.\d+)?|\.\d+)"
# a number not glued to a word or another number; "7/10" counts as its numerator
_SCORE = re.compile(rf"(?<![\w.])({_NUMBER})(?:\s*/\s*{_NUMBER})?(?!\w|\.\d)")
_EDGES = " \t\r\n\"'`*_.,;:!?()[]{}<>“”‘’«»"  # stripped from a label reply's ends
# how a refusal opens; only a reply that gives no answer is read for it ("I cannot fault it: 10" is a score)
_REFUSAL = re.compile(r"\s*(?:I['’]m sorry|I am sorry|I cannot|I can['’]t|I['’]m unable|I am unable)\b", re.I)


@dataclass(frozen=True)
class JudgeTarget:
    """Where a judge model is reached."""

    url: str  # `<base>/chat/completions`, or our model server's `<inference_url>/internal/generate`
    model: str  # the model name sent
    api_key: str | None = field(default=None, repr=False)  # Bearer key for an external endpoint; never shown
    # for our model server: extra payload fields {"kind": "chat", "base_model": ..., "adapter_uri": ...}
    internal: Mapping[str, Any] | None = None
    format_instruction: bool = True  # append the reply-format sentence to the prompt


@dataclass(frozen=True)
class JudgeLimits:
    timeout_s: float = 60.0  # per call, retry included
    concurrency: int = 8
    max_tokens: int = 512  # default when sampling_params has no max_completions_tokens


def _json_objects(reply: str) -> list[dict[str, Any]] | None:
    """Every JSON object in the reply (a bare one, or one inside prose or a code fence), in order; None when
    the reply nests JSON too deeply to read (such a reply is no answer, not even its last number)."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    position = reply.find("{")
    while position != -1:
        try:
            value, end = decoder.raw_decode(reply, position)
        except ValueError:
            position = reply.find("{", position + 1)
            continue
        except RecursionError:
            return None
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
    try:
        number = float(value)
    except OverflowError:  # an integer past a float's range
        return None
    return number if math.isfinite(number) else None


def parse_score(reply: str) -> float | None:
    """The judge's score: `result` (or `score`) of the last JSON object that has a numeric one, else the last
    number in the reply ("7/10" reads as 7); None when there is neither."""
    if (objects := _json_objects(reply)) is None:
        return None
    for obj in reversed(objects):
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
    if (objects := _json_objects(reply)) is None:
        return None
    for obj in reversed(objects):
        for key in ("label", "result"):
            if isinstance(obj.get(key), str):
                return _match_label(obj[key], labels)
    lines = [line for line in reply.splitlines() if line.strip()]
    for candidate in (reply, *lines[-1:]):
        if (label := _match_label(candidate, labels)) is not None:
            return label
    return None


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
        headers = auth_headers(self.target.api_key)
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
        """One call's result; no exception leaves it, whatever the reply or the HTTP outcome."""
        try:
            body = self.payload(self.messages(item, sample))
        except TemplateValueError as exc:
            return GradeResult.failed(exc.flag, str(exc))
        except Exception as exc:  # a bug of ours, as one call's failure
            return _other_error(exc)
        async with semaphore:
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.limits.timeout_s):
                    answer = await self._post(client, body)
                result = self._judge(answer)
            except TimeoutError:
                detail = f"the judge did not answer within {self.limits.timeout_s:g} s"
                result = GradeResult.failed("model_grader_server_error", detail)
            except _ServerError as exc:
                result = GradeResult.failed("model_grader_server_error", str(exc))
            except Exception as exc:
                result = _other_error(exc)
            result.execution_time = time.monotonic() - started
        return result

    async def _post(self, client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
        """The chat.completion answer; _ServerError for an HTTP error, an unreachable or unreadable server."""
        for attempt in range(2):
            try:
                response = await client.post(self.target.url, json=body)
            except httpx.TimeoutException:
                raise TimeoutError from None
            except UNREACHABLE as exc:
                raise _ServerError(unreachable_detail(exc)) from None
            if (wait := retry_wait(response, attempt)) is not None:
                await asyncio.sleep(wait)
                continue
            if response.status_code != 200:
                raise _ServerError(error_detail(response, endpoint="judge", api_key=self.target.api_key))
            try:
                answer = json_body(response)
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
        counts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens")]
        tokens = sum(n for n in counts if type(n) is int and 0 <= n < 2**31)  # no bool, nothing absurd
        extra: dict[str, Any] = {"token_usage": tokens, "scores": {"reply": reply[:REPLY_CHARS]}}
        if message.get("refusal"):
            return _refusal(str(message["refusal"]), extra)
        if isinstance(self.spec, LabelModelGrader):
            label = parse_label(reply, self.spec.labels)
            if label is None:
                return _unread(reply, f"the reply names none of the labels {self.spec.labels}", extra)
            reward = 1.0 if label in self.spec.passing_labels else 0.0
            return GradeResult(reward, scores={"label": label}, token_usage=tokens)
        low, high = self.spec.bounds
        score = parse_score(reply)
        if score is None:
            return _unread(reply, f"no score in the reply; expected a number from {low:g} to {high:g}", extra)
        if not low <= score <= high:
            detail = f"the score {score:g} in the reply; expected a number from {low:g} to {high:g}"
            return _parse_error(detail, extra)
        reward = min(1.0, max(0.0, (score - low) / (high - low)))
        return GradeResult(reward, scores={"score": score, "reply": reply[:REPLY_CHARS]}, token_usage=tokens)


def _parse_error(detail: str, extra: dict[str, Any]) -> GradeResult:
    return GradeResult.failed("model_grader_parse_error", detail[:DETAIL_CHARS], **extra)


def _refusal(text: str, extra: dict[str, Any]) -> GradeResult:
    detail = f"the judge refused: {text}"[:DETAIL_CHARS]
    return GradeResult.failed("model_grader_refusal_error", detail, **extra)


def _unread(reply: str, detail: str, extra: dict[str, Any]) -> GradeResult:
    """A reply that gives no answer: a refusal when it opens like one, else a parse error."""
    return _refusal(reply, extra) if _REFUSAL.match(reply) else _parse_error(detail, extra)


def _other_error(exc: Exception) -> GradeResult:
    return GradeResult.failed("other_error", f"{type(exc).__name__}: {exc}"[:DETAIL_CHARS])
