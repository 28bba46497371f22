"""`sppo graders validate|run` against a live server: the API's verdicts, rewards, flags and sub-rewards."""

import json
import os
import re
from pathlib import Path

import pytest

from jobspec.graders import GRADER_TYPES

from .conftest import Sppo, as_json

DOCS = Path(__file__).resolve().parents[2] / "docs" / "graders.md"

EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}
# one substituted letter: Indel distance 2 over 10 + 10 characters → 1 - 2/20 = 0.9 (tests/grading)
FUZZY = {
    "type": "text_similarity",
    "name": "fuzzy",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "evaluation_metric": "fuzzy_match",
}
PREFIX = {**EXACT, "name": "prefix", "reference": "defin", "operation": "like"}
MULTI = {
    "type": "multi",
    "name": "blend",
    "graders": {"fuzzy": FUZZY, "prefix": PREFIX},
    "calculate_output": "(fuzzy + prefix) / 2",
}
ITEM = {"answer": "definitely"}


def _cells(table: str) -> dict[str, str]:
    """The rows of the printed key/value table."""
    rows = [line.split("│") for line in table.splitlines()]
    return {row[1].strip(): row[2].strip() for row in rows if len(row) == 4}


def test_validate_a_valid_grader_inline_and_from_a_file(sppo: Sppo, tmp_path: Path) -> None:
    inline = sppo("graders", "validate", json.dumps(MULTI))
    assert inline.returncode == 0, inline.stderr
    assert "Valid multi grader blend" in inline.stdout
    path = tmp_path / "grader.json"
    path.write_text(json.dumps(EXACT))
    assert as_json(sppo("graders", "validate", str(path), "--json"))["grader"] == EXACT
    assert as_json(sppo("graders", "validate", f"@{path}", "--json"))["grader"] == EXACT


def test_an_invalid_grader_exits_1_naming_the_param(sppo: Sppo) -> None:
    bad = sppo("graders", "validate", json.dumps({**EXACT, "operation": "contains"}))
    assert bad.returncode == 1
    assert "(param: grader.operation, HTTP 400)" in bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout

    formula = {**MULTI, "calculate_output": "fuzzy + style"}
    refused = sppo("graders", "run", json.dumps(formula), "--sample", "x")
    assert refused.returncode == 1 and "'style' is no sub-grader name" in refused.stderr
    assert "(param: grader.calculate_output, HTTP 400)" in refused.stderr

    not_json = sppo("graders", "validate", "{nope")
    assert not_json.returncode == 2 and "not valid JSON" in not_json.stderr


def test_run_a_string_check(sppo: Sppo, tmp_path: Path) -> None:
    item = tmp_path / "item.json"
    item.write_text(json.dumps({"answer": "5"}))
    right = sppo("graders", "run", json.dumps(EXACT), "--sample", "5", "--item", f"@{item}")
    assert right.returncode == 0, right.stderr
    assert _cells(right.stdout)["reward"] == "1" and _cells(right.stdout)["errors"] == "none"
    wrong = as_json(sppo("graders", "run", json.dumps(EXACT), "--sample", "6", "--item", '{"answer": "5"}',
                         "--json"))  # fmt: skip
    assert wrong["reward"] == 0.0 and wrong["metadata"]["name"] == "exact"
    assert not any(value is True for value in wrong["metadata"]["errors"].values())

    # a template path the item lacks is a grader error: reward 0 and its flag, printed (exit 0: it ran)
    missing = sppo("graders", "run", json.dumps(EXACT), "--sample", "5")
    assert missing.returncode == 0, missing.stderr
    assert _cells(missing.stdout)["reward"] == "0" and "invalid_variable_error" in missing.stdout


def test_run_a_fuzzy_match_similarity(sppo: Sppo) -> None:
    result = as_json(sppo("graders", "run", json.dumps(FUZZY), "--sample", "definately", "--item",
                          json.dumps(ITEM), "--json"))  # fmt: skip
    assert result["reward"] == pytest.approx(0.9, abs=1e-12)
    assert result["metadata"]["type"] == "text_similarity"


def test_run_a_multi_grader_shows_sub_rewards(sppo: Sppo, tmp_path: Path) -> None:
    sample = tmp_path / "sample.txt"
    sample.write_text("definately")
    args = ("graders", "run", json.dumps(MULTI), "--sample-file", str(sample), "--item", json.dumps(ITEM))
    result = as_json(sppo(*args, "--json"))
    assert result["reward"] == pytest.approx(0.95, abs=1e-12)  # (0.9 + 1) / 2
    assert result["sub_rewards"] == {"fuzzy": pytest.approx(0.9, abs=1e-12), "prefix": 1.0}
    shown = sppo(*args)
    assert shown.returncode == 0, shown.stderr
    cells = _cells(shown.stdout)
    assert cells["reward"] == "0.95" and cells["fuzzy"] == "0.9" and cells["prefix"] == "1"
    assert cells["grader"] == "blend (multi)" and cells["errors"] == "none"


def test_run_a_python_grader(sppo: Sppo) -> None:
    from grading.sandbox import sandbox_unavailable_reason

    reason = sandbox_unavailable_reason()
    if reason is not None and not os.environ.get("CI"):
        pytest.skip(f"the Python grader sandbox cannot run here: {reason}")
    source = (
        "def grade(sample, item):\n"
        "    text = sample['output_text'].strip()\n"
        "    return 1.0 if text == item['answer'] else 0.25 if item['answer'] in text else 0.0\n"
    )
    grader = json.dumps({"type": "python", "name": "py", "source": source})
    item = json.dumps({"answer": "42"})
    exact = as_json(sppo("graders", "run", grader, "--sample", " 42 ", "--item", item, "--json"))
    assert exact["reward"] == 1.0 and exact["metadata"]["type"] == "python"
    partial = as_json(sppo("graders", "run", grader, "--sample", "it is 42", "--item", item, "--json"))
    assert partial["reward"] == 0.25

    crash = json.dumps({"type": "python", "name": "py", "source": "def grade(sample, item):\n    1 / 0\n"})
    failed = sppo("graders", "run", crash, "--sample", "x")
    assert failed.returncode == 0, failed.stderr
    assert "python_grader_runtime_error" in failed.stdout and "ZeroDivisionError" in failed.stdout


def test_every_grader_in_the_docs_is_valid_and_the_documented_run_is_what_runs(sppo: Sppo) -> None:
    blocks = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", DOCS.read_text(), re.S)]
    graders = [block for block in blocks if "type" in block]
    assert sorted(grader["type"] for grader in graders) == sorted(GRADER_TYPES)
    for grader in graders:
        assert (
            as_json(sppo("graders", "validate", json.dumps(grader), "--json"))["grader"]["name"]
            == grader["name"]
        )
    documented = next(block for block in blocks if "reward" in block)
    multi = next(grader for grader in graders if grader["type"] == "multi")
    ran = as_json(sppo("graders", "run", json.dumps(multi), "--sample", "definately", "--item",
                       json.dumps(ITEM), "--json"))  # fmt: skip
    assert ran["reward"] == pytest.approx(documented["reward"], abs=1e-12)
    assert ran["sub_rewards"] == pytest.approx(documented["sub_rewards"], abs=1e-12)
    assert ran["metadata"]["scores"] == documented["metadata"]["scores"]
