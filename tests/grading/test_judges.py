"""Model judges and cosine similarity against our real model server (uvicorn on a free port, serving the
shipped `sppo-tiny`) and against canned answers (a hostile or broken endpoint), plus the reply parsers.

sppo-tiny answers an arithmetic prompt "a+b+c=" with "a+b=s;s+c=t#### t": a score judge in [0, 100] reads
the last number, t. Its 64-token window has no room for the reply-format sentence, so these targets set
`format_instruction=False`.
"""

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import uvicorn

from core.settings import Settings
from grading.embeddings import EmbeddingsError, EmbeddingsTarget, cosine_similarities
from grading.judges import JudgeLimits, JudgeTarget, ModelJudge, parse_label, parse_score
from inference.server import create_app
from jobspec.graders import LabelModelGrader, ScoreModelGrader
from jobspec.serving import MAX_EMBEDDING_CHARS
from jobspec.templates import Sample
from tests.conftest import run_in_own_loop

PROMPTS = [
    "36+13+46=",
    "11+22+33=",
    "25+25+25=",
    "31+12+14=",
    "44+21+13=",
    "15+16+17=",
    "10+20+30=",
    "40+20+10=",
]
TIMEOUT_S = 20.0
SERVER_SECRET = "judges-model-server-secret-0123456789abcdef"  # the model server's SPPO_INFERENCE_SECRET


@pytest.fixture(scope="module")
def server(tiny: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The model server's base URL."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("judges"), inference_secret=SERVER_SECRET)  # type: ignore[call-arg]
    config = uvicorn.Config(create_app(settings), log_level="warning")
    uvicorn_server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the model server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    uvicorn_server.should_exit = True
    thread.join(timeout=30)
    sock.close()


def _target(server: str, **change: Any) -> JudgeTarget:
    internal = {"kind": "chat", "base_model": "sppo-tiny", "adapter_uri": None}
    fields = {"url": f"{server}/internal/generate", "model": "sppo-tiny", "internal": internal,
              "format_instruction": False, "api_key": SERVER_SECRET, **change}  # fmt: skip
    return JudgeTarget(**fields)


def _score_grader(**change: Any) -> ScoreModelGrader:
    spec = {"type": "score_model", "name": "judge", "model": "sppo-tiny", "range": [0, 100],
            "input": [{"role": "user", "content": "{{item.question}}"}],
            "sampling_params": {"temperature": 0, "max_completions_tokens": 40}, **change}  # fmt: skip
    return ScoreModelGrader.model_validate(spec)


def _calls(prompts: list[str]) -> list[tuple[dict[str, Any], Sample]]:
    return [({"question": prompt}, Sample("")) for prompt in prompts]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_score_judge_reads_the_last_number(server: str) -> None:
    [result] = ModelJudge(_score_grader(), _target(server)).grade(_calls(["36+13+46="]))
    assert result.ok, result.errors
    reply = result.scores["reply"]
    assert re.fullmatch(r"36\+13=\d+;\d+\+46=\d+#### \d+", reply), reply
    answer = float(reply.rsplit(" ", 1)[1])
    assert result.scores["score"] == answer
    assert result.reward == min(1.0, max(0.0, answer / 100))
    assert result.token_usage > 10 and result.execution_time > 0  # the 10-token prompt and the reply


def test_the_judge_messages_and_payload() -> None:
    parts = [
        {"type": "input_text", "text": "Q: {{item.q}}"},
        {"type": "input_text", "text": "A: {{sample.output_text}}"},
    ]
    grader = _score_grader(
        input=[{"role": "developer", "content": "Grade."}, {"role": "user", "content": parts}],
        sampling_params={"reasoning_effort": "low", "seed": 3},
    )
    instruction = (
        'Give your score as a number from 0 to 100. Reply with only a JSON object: {"result": <number>}'
    )
    external = ModelJudge(grader, JudgeTarget("http://judge/v1/chat/completions", "gpt-x"))
    messages = external.messages({"q": "1+1"}, Sample("2"))
    assert messages == [
        {"role": "developer", "content": "Grade."},
        {"role": "user", "content": f"Q: 1+1\nA: 2\n\n{instruction}"},
    ]
    assert external.payload(messages) == {
        "model": "gpt-x", "messages": messages, "seed": 3,
        "max_completion_tokens": 512, "reasoning_effort": "low",
    }  # fmt: skip
    internal = ModelJudge(
        grader, JudgeTarget("http://m/internal/generate", "m", internal={"base_model": "b"})
    )
    messages = internal.messages({"q": "1+1"}, Sample("2"))
    assert messages[0] == {"role": "system", "content": "Grade."}  # our server has no developer role
    assert internal.payload(messages) == {
        "model": "m", "messages": messages, "seed": 3,
        "kind": "chat", "n": 1, "base_model": "b", "max_tokens": None,
    }  # fmt: skip
    labels = LabelModelGrader.model_validate(
        {"type": "label_model", "name": "l", "model": "m", "labels": ["good", "bad"],
         "passing_labels": ["good"], "input": [{"role": "system", "content": "Judge {{sample.output_text}}"}]}
    )  # fmt: skip
    appended = ModelJudge(labels, JudgeTarget("u", "m")).messages({}, Sample("x"))
    assert appended == [
        {"role": "system", "content": "Judge x"},
        {"role": "user", "content": 'Answer with exactly one of these labels: "good", "bad". '
                                    'Reply with only a JSON object: {"label": "<label>"}'},
    ]  # fmt: skip


def test_label_judge_without_a_label_in_the_reply(server: str) -> None:
    grader = LabelModelGrader.model_validate(
        {"type": "label_model", "name": "judge", "model": "sppo-tiny", "labels": ["yes", "no"],
         "passing_labels": ["yes"], "input": [{"role": "user", "content": "{{item.question}}"}],
         "sampling_params": {"temperature": 0, "max_completions_tokens": 40}}
    )  # fmt: skip
    [result] = ModelJudge(grader, _target(server)).grade(_calls(["11+22+33="]))
    assert result.reward == 0.0 and list(result.errors) == ["model_grader_parse_error"]
    assert result.scores["reply"].startswith("11+22=") and result.token_usage > 10


def test_server_errors(server: str) -> None:
    limits = JudgeLimits(timeout_s=5)
    started = time.monotonic()
    closed = JudgeTarget(f"http://127.0.0.1:{_closed_port()}/internal/generate", "sppo-tiny", internal={})
    [unreachable] = ModelJudge(_score_grader(), closed, limits).grade(_calls(["1+2+3="]))
    assert time.monotonic() - started < limits.timeout_s
    assert unreachable.reward == 0.0 and list(unreachable.errors) == ["model_grader_server_error"]
    assert "ConnectError" in unreachable.errors["model_grader_server_error"]
    # the real server's refusals: an unknown base model (404), a budget past the 64-token window (400)
    unknown = _target(server, internal={"kind": "chat", "base_model": "no-such-base"})
    [missing] = ModelJudge(_score_grader(), unknown).grade(_calls(["1+2+3="]))
    assert missing.errors["model_grader_server_error"].startswith("HTTP 404: The model 'sppo-tiny' cannot")
    long = _score_grader(sampling_params={"max_completions_tokens": 60})
    [too_long] = ModelJudge(long, _target(server)).grade(_calls(["1+2+3="]))
    assert too_long.errors["model_grader_server_error"].startswith("HTTP 400: max_tokens is too large")
    # without the model server's secret a judge gets nothing, and its error names no secret
    for key in (None, "wrong"):
        [refused] = ModelJudge(_score_grader(), _target(server, api_key=key)).grade(_calls(["1+2+3="]))
        assert refused.reward == 0.0 and list(refused.errors) == ["model_grader_server_error"]
        detail = refused.errors["model_grader_server_error"]
        assert "HTTP 401" in detail and SERVER_SECRET not in detail


def test_concurrent_calls_come_back_in_order(server: str) -> None:
    prompts = PROMPTS * 2
    calls = _calls(prompts)
    calls[5] = ({}, Sample(""))  # no question: a template error, and no request
    judge = ModelJudge(_score_grader(), _target(server), JudgeLimits(timeout_s=TIMEOUT_S, concurrency=4))
    results = judge.grade(calls)
    assert len(results) == 16
    for index, (prompt, result) in enumerate(zip(prompts, results, strict=True)):
        if index == 5:
            assert result.errors == {"invalid_variable_error": "{{item.question}} has no value for this item"}
            assert result.token_usage == 0 and result.execution_time == 0
            continue
        first_two = prompt.rsplit("+", 1)[0]
        assert result.ok and result.scores["reply"].startswith(f"{first_two}="), (prompt, result)
    assert results[0].scores == results[8].scores  # greedy: the same prompt, the same reply


def test_template_errors_make_no_request() -> None:
    grader = _score_grader(
        input=[{"role": "user", "content": "{{sample.output_json.answer}} {{item.question}}"}]
    )
    closed = JudgeTarget(f"http://127.0.0.1:{_closed_port()}/internal/generate", "m", internal={})
    results = ModelJudge(grader, closed).grade(
        [({"question": "q"}, Sample("not json")), ({}, Sample('{"a": 1}'))]
    )
    assert [list(result.errors) for result in results] == [["sample_parse_error"], ["invalid_variable_error"]]
    assert ModelJudge(grader, closed).grade([]) == []


def test_grade_from_a_worker_thread_and_inside_an_event_loop(server: str) -> None:
    judge = ModelJudge(_score_grader(), _target(server))
    with ThreadPoolExecutor(max_workers=1) as pool:
        [from_thread] = pool.submit(judge.grade, _calls(["25+25+25="])).result()

    async def in_loop() -> float:
        [result] = judge.grade(_calls(["25+25+25="]))
        return result.reward

    assert from_thread.ok and run_in_own_loop(in_loop()) == from_thread.reward


def test_cosine_similarities_from_the_model_server(server: str) -> None:
    target = EmbeddingsTarget(
        f"{server}/internal/embeddings",
        "sppo-tiny",
        api_key=SERVER_SECRET,
        internal={"base_model": "sppo-tiny"},
    )
    pairs = [("12+34=46", "12+34=46"), ("12+34=46", "98+76=174"), ("98+76=174", "12+34=46"), ("", "")]
    same, different, swapped, empty = cosine_similarities(target, pairs)
    assert same == 1.0 and empty == 1.0
    assert 0.0 <= different < 1.0 and swapped == different
    assert cosine_similarities(target, [("a", "a")]) == [1.0]  # nothing to send
    closed = EmbeddingsTarget(f"http://127.0.0.1:{_closed_port()}/embeddings", "m")
    with pytest.raises(EmbeddingsError, match="ConnectError"):
        cosine_similarities(closed, [("a", "b")], timeout_s=5)
    unknown = EmbeddingsTarget(
        f"{server}/internal/embeddings", "x", api_key=SERVER_SECRET, internal={"base_model": "no-such-base"}
    )
    with pytest.raises(EmbeddingsError, match="HTTP 404"):
        cosine_similarities(unknown, [("a", "b")])
    wrong = EmbeddingsTarget(f"{server}/internal/embeddings", "x", api_key="wrong-" + SERVER_SECRET,
                             internal={"base_model": "sppo-tiny"})  # fmt: skip
    with pytest.raises(
        EmbeddingsError, match=r"^the embeddings endpoint refused the service's credentials \(HTTP 401\)$"
    ):
        cosine_similarities(wrong, [("a", "b")])


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ('{"result": 7}', 7.0),
        ('Reasoning... {"steps": [], "result": 0.25}', 0.25),
        ('```json\n{"score": "8.5"}\n```', 8.5),
        ('{"result": 3} then {"result": 4}', 4.0),
        ('{"result": true} so 6', 6.0),  # a boolean is no score
        ("17+21=48;48+20=68#### 68", 68.0),
        ("I'd say 7/10.", 7.0),
        ("Score: -2.5", -2.5),
        ("38-20", 20.0),
        ("The score is 8.", 8.0),
        ("gpt4 says 3", 3.0),
        ("no number here", None),
        ("I can't help with that.", None),
        ("", None),
    ],
)
def test_parse_score(reply: str, score: float | None) -> None:
    assert parse_score(reply) == score


@pytest.mark.parametrize(
    ("reply", "label"),
    [
        ('{"label": "Good"}', "good"),
        ('Thinking.\n{"label": "bad"}', "bad"),
        ('{"label": "great"}', None),  # a JSON answer naming no label is not read further
        ("good", "good"),
        ('  "GOOD".  ', "good"),
        ("**bad**", "bad"),
        ("The answer is good", None),
        ("It is fine.\nbad", "bad"),
        ("good or bad", None),
        ("", None),
    ],
)
def test_parse_label(reply: str, label: str | None) -> None:
    assert parse_label(reply, ["good", "bad"]) == label


def test_parse_label_with_labels_that_differ_in_case() -> None:
    assert parse_label("Yes", ["yes", "Yes"]) == "Yes"
    assert parse_label("YES", ["yes", "Yes"]) is None
    assert parse_label("pass.", ["pass", "fail"]) == "pass"


def test_score_range(server: str) -> None:
    # 20+30+40 = 110 is past the range [0, 100]: a parse error, not a clipped reward
    [out_of_range] = ModelJudge(_score_grader(), _target(server)).grade(_calls(["20+30+40="]))
    assert out_of_range.reward == 0.0 and list(out_of_range.errors) == ["model_grader_parse_error"]
    assert "the score 110" in out_of_range.errors["model_grader_parse_error"]
    wide = _score_grader(range=[50, 150])
    [scaled] = ModelJudge(wide, _target(server)).grade(_calls(["20+30+40="]))
    assert scaled.scores["score"] == 110 and scaled.reward == pytest.approx(0.6)


def _answer(content: str | None, **message: Any) -> dict[str, Any]:
    return {"choices": [{"message": {"content": content, **message}}]}


@pytest.mark.parametrize(
    ("answer", "flag", "details"),
    [
        (_answer(None, refusal="No."), "model_grader_refusal_error", "the judge refused: No."),
        (
            _answer("I'm sorry, but I can't grade this."),
            "model_grader_refusal_error",
            "the judge refused: I'm",
        ),
        (_answer("  I cannot assess medical advice."), "model_grader_refusal_error", "the judge refused:"),
        (_answer("I cannot fault it. Score: 70"), None, ""),  # an answer, however it opens
        (_answer("The answer is sorry."), "model_grader_parse_error", "no score in the reply"),
        (_answer('{"result": ' + "[" * 100_000), "model_grader_parse_error", "no score"),  # nests too deep
        (_answer('{"result": 1' + "0" * 400 + "}"), "model_grader_parse_error", "the score inf"),
    ],
)
def test_refusals_and_unreadable_replies(answer: dict[str, Any], flag: str | None, details: str) -> None:
    result = ModelJudge(_score_grader(), JudgeTarget("u", "m"))._judge(answer)
    if flag is None:
        assert result.ok and result.scores["score"] == 70, result
    else:
        assert result.reward == 0.0 and list(result.errors) == [flag], result
        assert result.errors[flag].startswith(details), result.errors


def test_a_label_judge_that_refuses() -> None:
    grader = LabelModelGrader.model_validate(
        {"type": "label_model", "name": "l", "model": "m", "labels": ["yes", "no"], "passing_labels": ["yes"],
         "input": [{"role": "user", "content": "?"}]}
    )  # fmt: skip
    result = ModelJudge(grader, JudgeTarget("u", "m"))._judge(_answer("I can’t help with that."))
    assert list(result.errors) == ["model_grader_refusal_error"]


# ---- a judge or embeddings endpoint that answers whatever a test puts in ANSWERS (status, headers, body)

ANSWERS: list[tuple[int, dict[str, str], bytes]] = []
SECRET_KEY = "sk-proj-secret-0123456789"


class _Canned(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        status, headers, body = ANSWERS.pop(0) if len(ANSWERS) > 1 else ANSWERS[0]
        self.send_response(status)
        for name, value in {"content-type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def canned() -> Iterator[str]:
    with ThreadingHTTPServer(("127.0.0.1", 0), _Canned) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
        httpd.shutdown()


DEEP = b'{"choices": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
OK = json.dumps(_answer('{"result": 50}')).encode()
KEY_REFUSED = json.dumps({"error": {"message": f"Incorrect API key provided: {SECRET_KEY[:8]}****6789."}})


@pytest.mark.parametrize(
    ("answers", "flag", "details"),
    [
        ([(200, {}, DEEP)], "model_grader_server_error", "HTTP 200 without a chat completion"),
        ([(500, {}, DEEP)], "model_grader_server_error", "HTTP 500: {"),
        ([(200, {}, json.dumps(_answer("[" * 100_000)).encode())], "model_grader_parse_error", "no score"),
        (
            [(401, {}, KEY_REFUSED.encode())],
            "model_grader_server_error",
            "the judge endpoint refused the service's credentials (HTTP 401)",
        ),
        (
            [(400, {}, json.dumps({"error": {"message": f"{SECRET_KEY} " + "x" * 900}}).encode())],
            "model_grader_server_error",
            "HTTP 400: *** xxx",
        ),
        ([(429, {"retry-after": "nan"}, b"{}"), (200, {}, OK)], None, ""),
        ([(503, {"retry-after": "-5"}, b"{}"), (200, {}, OK)], None, ""),
    ],
)
def test_no_answer_escapes_the_judge(
    canned: str, answers: list[tuple[int, dict[str, str], bytes]], flag: str | None, details: str
) -> None:
    ANSWERS[:] = answers
    target = JudgeTarget(f"{canned}/v1/chat/completions", "gpt-x", api_key=SECRET_KEY)
    [result] = ModelJudge(_score_grader(), target, JudgeLimits(timeout_s=10)).grade(_calls(["1+1"]))
    if flag is None:
        assert result.ok and result.scores["score"] == 50, result
        return
    assert result.reward == 0.0 and list(result.errors) == [flag], result
    assert result.errors[flag].startswith(details) and len(result.errors[flag]) <= 500, result.errors
    assert SECRET_KEY[:8] not in result.errors[flag] and SECRET_KEY not in repr(target)


def test_a_url_that_is_no_url_is_a_server_error() -> None:
    [result] = ModelJudge(_score_grader(), JudgeTarget("http://[::1", "m")).grade(_calls(["1+1"]))
    assert list(result.errors) == ["model_grader_server_error"], result


def test_embeddings_from_a_broken_or_refusing_endpoint(canned: str) -> None:
    target = EmbeddingsTarget(f"{canned}/v1/embeddings", "e", api_key=SECRET_KEY)
    assert SECRET_KEY not in repr(target)
    for answers, message in [
        ([(401, {}, KEY_REFUSED.encode())], r"^the embeddings endpoint refused the service's credentials"),
        ([(200, {}, b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")], "no embedding for every input"),
        (
            [(200, {}, b'{"data": [{"index": 0, "embedding": [1e999]}, {"index": 1, "embedding": [1]}]}')],
            "not finite",
        ),
    ]:
        ANSWERS[:] = answers
        with pytest.raises(EmbeddingsError, match=message):
            cosine_similarities(target, [("a", "b")], timeout_s=10)
    vectors = {"data": [{"index": 0, "embedding": [1e200, 0]}, {"index": 1, "embedding": [1e200, 1e200]}]}
    ANSWERS[:] = [(429, {"retry-after": "nan"}, b"{}"), (200, {}, json.dumps(vectors).encode())]
    assert cosine_similarities(target, [("a", "b")], timeout_s=10) == [pytest.approx(0.5**0.5)]


def test_a_text_past_the_model_servers_limit_is_cut_not_refused(server: str) -> None:
    target = EmbeddingsTarget(
        f"{server}/internal/embeddings",
        "sppo-tiny",
        api_key=SERVER_SECRET,
        internal={"base_model": "sppo-tiny"},
    )
    long, longer = "1+2=3;" * (MAX_EMBEDDING_CHARS // 6 + 1), "1+2=3;" * (MAX_EMBEDDING_CHARS // 3)
    [same_start, different] = cosine_similarities(target, [(long, longer), (long, "9")])
    assert same_start == pytest.approx(1.0) and 0.0 <= different < 1.0  # the first 65536 characters agree
