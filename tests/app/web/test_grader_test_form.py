"""The new-job form's grader: any grader type as JSON, and the "Test the grader" panel (POST /ui/graders/run,
session-authenticated and CSRF-checked) that grades one sample without submitting the job. Saves
docs/screenshots/grader-test.png."""

import json
import re
from pathlib import Path
from typing import Any

import httpx

from ..conftest import ITEM, Server
from .conftest import SCREENSHOTS, Browser, signed_in_page

EXACT = {"grader_type": "string_check", "grader_input": "{{sample.output_text}}",
         "grader_reference": "{{item.answer}}", "grader_operation": "eq"}  # fmt: skip
FUZZY = {
    "type": "text_similarity",
    "name": "fuzzy",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "evaluation_metric": "fuzzy_match",
}
MULTI = {
    "type": "multi",
    "name": "blend",
    "graders": {
        "fuzzy": FUZZY,
        "prefix": {
            "type": "string_check",
            "name": "prefix",
            "input": "{{sample.output_text}}",
            "reference": "defin",
            "operation": "like",
        },
    },
    "calculate_output": "(fuzzy + prefix) / 2",
}


def _reward(html: str) -> float:
    match = re.search(r'data-reward="([^"]+)"', html)
    assert match, html
    return float(match.group(1))


def _field(html: str) -> str:
    match = re.search(r'data-field="([^"]*)"', html)
    assert match, html
    return match.group(1)


def test_the_panel_grades_a_sample_with_the_forms_grader(server: Server, browser: Browser) -> None:
    page = browser.get("/jobs/new").text
    assert 'id="grader-test"' in page and "/static/graders.js" in page and 'value="json"' in page
    assert browser.get("/static/graders.js").status_code == 200

    run = "/ui/graders/run"
    fields = {**EXACT, "test_sample": "5", "test_item": '{"answer": "5"}'}
    assert browser.http.post(run, data=fields).status_code == 403  # no CSRF token
    right = browser.post(run, fields)
    assert right.status_code == 200 and _reward(right.text) == 1.0 and "No grader errors." in right.text
    assert _reward(browser.post(run, {**fields, "test_sample": "6"}).text) == 0.0
    # the token may come as the header the page's script sends, as for every dashboard POST
    header = browser.http.post(run, data=fields, headers={"X-CSRF-Token": browser.csrf})
    assert header.status_code == 200 and _reward(header.text) == 1.0

    # a grader error: reward 0 and its flag, with what it means
    flagged = browser.post(run, {**fields, "test_item": "{}"})
    assert flagged.status_code == 200 and _reward(flagged.text) == 0.0
    assert 'data-flag="invalid_variable_error"' in flagged.text and "does not have" in flagged.text

    # any grader type as JSON; a multi grader's sub-rewards are listed
    as_json = {"grader_type": "json", "grader_json": json.dumps(MULTI)}
    multi = browser.post(
        run, {**as_json, "test_sample": "definately", "test_item": '{"answer": "definitely"}'}
    )
    assert multi.status_code == 200 and abs(_reward(multi.text) - 0.95) < 1e-12  # (0.9 + 1) / 2
    assert 'data-sub="fuzzy"' in multi.text and 'data-sub="prefix"' in multi.text and "0.9" in multi.text


def test_the_panel_names_what_is_wrong(server: Server, browser: Browser) -> None:
    run = "/ui/graders/run"
    sample = {"test_sample": "5", "test_item": '{"answer": "5"}'}
    bad_operation = browser.post(run, {**EXACT, **sample, "grader_operation": "contains"})
    assert bad_operation.status_code == 400 and "The grader did not run" in bad_operation.text
    assert (
        "param: grader.operation" in bad_operation.text and _field(bad_operation.text) == "grader_operation"
    )

    bad_json = {"grader_type": "json", **sample}
    not_json = browser.post(run, {**bad_json, "grader_json": "{nope"})
    assert not_json.status_code == 400 and _field(not_json.text) == "grader_json"
    formula = browser.post(run, {**bad_json, "grader_json": json.dumps({**MULTI, "calculate_output": "x+1"})})
    assert formula.status_code == 400 and "is no sub-grader name" in formula.text
    assert "param: grader.calculate_output" in formula.text and _field(formula.text) == "grader_json"

    for item in ("[1, 2]", "{oops"):
        refused = browser.post(run, {**EXACT, "test_sample": "5", "test_item": item})
        assert refused.status_code == 400 and _field(refused.text) == "test_item"

    signed_out = Browser(server)
    signed_out.csrf = browser.csrf
    assert signed_out.post(run, {**EXACT, **sample}).status_code in (401, 403)
    signed_out.http.close()


def test_the_form_creates_a_job_with_a_grader_given_as_json(browser: Browser, api: httpx.Client) -> None:
    upload = {"training_file_upload": ("train.jsonl", (ITEM * 2).encode())}
    fields = {"model": "sppo-tiny", "algorithm": "sppo", "grader_type": "json", "batch_size": "2"}
    grader = {**MULTI, "graders": {"fuzzy": FUZZY}, "calculate_output": "fuzzy"}
    wrong = {**grader, "graders": {"fuzzy": {**FUZZY, "evaluation_metric": "jaccard"}}}
    rejected = browser.post("/jobs/new", {**fields, "grader_json": json.dumps(wrong)}, files=upload)
    assert rejected.status_code == 400 and "evaluation_metric" in rejected.text
    assert re.search(r'class="field invalid"[^>]*>\s*<label for="grader_json"', rejected.text)
    assert "jaccard" in rejected.text  # the JSON is kept for the corrected form

    file_id = api.get("/v1/files").json()["data"][0]["id"]
    created = browser.post(
        "/jobs/new",
        {**fields, "training_file": file_id, "grader_json": json.dumps(grader), "test_item": "{}"},
    )
    assert created.status_code == 303, created.text
    job = api.get(f"/v1/fine_tuning/jobs/{created.headers['location'].rsplit('/', 1)[-1]}").json()
    assert job["method"]["reinforcement"]["grader"] == grader


def test_the_panel_in_the_browser(server: Server, chromium: Any, key: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "Spell it"}], "answer": "definitely"}\n')
    page = signed_in_page(chromium, server.base_url, key)
    page.goto("/jobs/new")
    assert page.input_value("#grader_type") == "regex"  # sppo-tiny's recommended grader
    assert (
        page.locator("#grader_pattern").is_visible() and page.locator("#grader_evaluation_metric").is_hidden()
    )
    page.select_option("#grader_type", "string_check")
    assert page.locator("#grader_pattern").is_hidden() and page.locator("#grader_json").is_hidden()
    page.set_input_files("#training_file_upload", str(data))
    expect(page.locator("#test_item")).to_have_value(re.compile("definitely"))  # no JS predicate: CSP
    assert json.loads(page.input_value("#test_item"))["answer"] == "definitely"

    page.select_option("#grader_type", "json")
    assert json.loads(page.input_value("#grader_json"))["type"] == "string_check"  # started from the fields
    page.fill("#grader_json", json.dumps(MULTI, indent=2))
    page.fill("#test_sample", "definately")
    page.click("#grader-test-button")
    page.wait_for_selector("#grader-test-result .grader-result")
    assert page.locator("#grader-test-result .reward strong").inner_text() == "0.95"
    assert page.locator("#grader-test-result tr[data-sub='fuzzy'] td.num").inner_text() == "0.9"
    assert page.url.endswith("/jobs/new")  # nothing was submitted
    page.locator("#grader").scroll_into_view_if_needed()
    top = page.evaluate("document.getElementById('grader').getBoundingClientRect().top + window.scrollY")
    bottom = page.evaluate(
        "document.getElementById('grader-test').getBoundingClientRect().bottom + window.scrollY"
    )
    page.set_viewport_size({"width": 1280, "height": int(bottom - top) + 40})
    page.evaluate(f"window.scrollTo(0, {int(top) - 20})")
    page.screenshot(path=str(SCREENSHOTS / "grader-test.png"))

    page.fill("#grader_json", json.dumps({**MULTI, "calculate_output": "fuzzy + style"}))
    page.click("#grader-test-button")
    page.wait_for_selector("#grader-test-result .alert")
    assert "is no sub-grader name" in page.locator("#grader-test-result").inner_text()
    assert page.locator(".field.invalid #grader_json").count() == 1
    page.context.close()
