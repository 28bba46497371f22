"""Grader templates: which placeholders are allowed, and how rendering substitutes them (lookups only)."""

from typing import Any

import pytest

from jobspec.templates import (
    Sample,
    TemplateSyntaxError,
    TemplateValueError,
    check_template,
    item_paths,
    present_paths,
    render,
)

ITEM: dict[str, Any] = {
    "a": "alpha",
    "meta": {"gold": "42", "tags": ["x", "y"], "deep": {"n": 7}},
    "choices": [{"text": "first"}, {"text": "second"}],
    "number": 3.5,
    "count": 2,
    "flag": True,
    "nothing": None,
}


@pytest.mark.parametrize(
    "template",
    [
        "{{item.a}}",
        "{{ item.meta.gold }}",
        "{{sample.output_text}}",
        "{{sample.output_json.x.y}}",
        "{{ sample.output_json }}",
        "{{item.choices.0.text}}",  # a list index is a path segment
        "{{\n  item.a\n}}",  # whitespace inside the braces, newlines included
        "Question: {{item.a}}\nAnswer: {{ sample.output_text }}",
        "plain text with { single } braces",
        "no placeholders at all",
        "",
        # `__class__` is accepted as a key name: rendering only ever looks keys up in dicts (see below)
        "{{ item.__class__ }}",
        "{{ item.some-key_2 }}",
    ],
)
def test_allowed_templates(template: str) -> None:
    assert check_template(template) == template


@pytest.mark.parametrize(
    "template",
    [
        "{{item}}",  # the whole item is not a variable
        "{{ sample }}",
        "{{sample.foo}}",
        "{{ sample.output_text.x }}",  # text has no fields
        "{{ sample.output_tools }}",
        "{{ other.a }}",
        "{{}}",
        "{{ item. }}",
        "{{ item..a }}",
        "{{ item.a | upper }}",  # no Jinja filters
        "{{ item.a + 1 }}",
        "{{ item.a() }}",
        "{{ item['a'] }}",
        "{{ item.a[0] }}",
        "{% if item.a %}yes{% endif %}",
        "{# a comment #}",
        "{{ item.a }",  # stray braces
        "{{ item.a }} and }}",
        "{{ item.a }} {{",
        "text {%",
    ],
)
def test_refused_templates(template: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        check_template(template)


def test_refused_template_names_the_variable() -> None:
    with pytest.raises(TemplateSyntaxError, match=r"sample\.foo"):
        check_template("ok {{item.a}} bad {{sample.foo}}")


def test_render_nested_fields_and_list_indexes() -> None:
    sample = Sample("the answer")
    assert render("{{ item.meta.gold }}", ITEM, sample) == "42"
    assert render("{{item.meta.deep.n}}", ITEM, sample) == "7"
    assert render("{{item.choices.1.text}}", ITEM, sample) == "second"
    assert render("{{item.meta.tags.0}}{{item.meta.tags.1}}", ITEM, sample) == "xy"
    assert render("Q: {{item.a}} A: {{sample.output_text}}", ITEM, sample) == "Q: alpha A: the answer"


def test_render_non_strings_as_json_text() -> None:
    sample = Sample("")
    assert render("{{item.number}} {{item.count}} {{item.flag}} {{item.nothing}}", ITEM, sample) == (
        "3.5 2 true null"
    )
    assert render("{{item.meta.tags}}", ITEM, sample) == '["x", "y"]'
    assert render("{{item.meta.deep}}", ITEM, sample) == '{"n": 7}'


def test_render_sample_output_json_when_the_sample_is_json() -> None:
    sample = Sample('{"x": {"y": [1, 2]}, "label": "good"}')
    assert render("{{sample.output_json.label}}", {}, sample) == "good"
    assert render("{{ sample.output_json.x.y }}", {}, sample) == "[1, 2]"
    assert render("{{sample.output_json.x.y.1}}", {}, sample) == "2"
    assert render("{{sample.output_json}}", {}, sample) == '{"x": {"y": [1, 2]}, "label": "good"}'
    assert render("{{sample.output_json}}", {}, Sample("17")) == "17"


@pytest.mark.parametrize("text", ["not json", "", "{'single': 'quotes'}", '{"unterminated": '])
def test_sample_output_json_of_a_non_json_sample_is_a_parse_error(text: str) -> None:
    with pytest.raises(TemplateValueError) as caught:
        render("{{sample.output_json.x}}", ITEM, Sample(text))
    assert caught.value.flag == "sample_parse_error"
    # output_text still renders
    assert render("{{sample.output_text}}", ITEM, Sample(text)) == text


@pytest.mark.parametrize(
    ("template", "sample"),
    [
        ("{{item.missing}}", "x"),
        ("{{item.meta.missing}}", "x"),
        ("{{item.a.length}}", "x"),  # a string has no fields
        ("{{item.choices.2.text}}", "x"),  # index out of range
        ("{{item.choices.-1.text}}", "x"),  # no negative indexes
        ("{{item.choices.text}}", "x"),  # a list needs an index
        ("{{item.meta.tags.x}}", "x"),
        ("{{item.count.real}}", "x"),  # never attribute access on values
        ("{{sample.output_json.missing}}", '{"x": 1}'),
        ("{{sample.output_json.upper}}", '"a json string"'),
    ],
)
def test_missing_field_is_an_invalid_variable_error(template: str, sample: str) -> None:
    with pytest.raises(TemplateValueError) as caught:
        render(template, ITEM, Sample(sample))
    assert caught.value.flag == "invalid_variable_error"


def test_dunder_names_are_plain_dict_keys_never_attributes() -> None:
    # the item dict has attributes __class__, __doc__, keys...; render must not reach any of them
    for name in ("__class__", "__doc__", "keys", "__init__", "items"):
        with pytest.raises(TemplateValueError) as caught:
            render(f"{{{{ item.{name} }}}}", ITEM, Sample("x"))
        assert caught.value.flag == "invalid_variable_error"
        with pytest.raises(TemplateValueError):
            render(f"{{{{ item.a.{name} }}}}", ITEM, Sample("x"))
    # a key of that name is read like any other
    assert render("{{ item.__class__ }}", {"__class__": "k"}, Sample("x")) == "k"


def test_substituted_text_is_not_rendered_again() -> None:
    item = {"a": "{{item.b}}", "b": "SECRET"}
    assert render("{{item.a}}", item, Sample("x")) == "{{item.b}}"
    assert render("{{sample.output_text}}|{{item.b}}", item, Sample("{{item.b}}")) == "{{item.b}}|SECRET"
    assert render("{{sample.output_json.t}}", item, Sample('{"t": "{{item.b}}"}')) == "{{item.b}}"


def test_item_paths() -> None:
    template = "{{item.a}} {{ item.meta.gold }} {{item.choices.0.text}} {{sample.output_json.x}} {{item.a}}"
    assert item_paths(template) == {("a",), ("meta", "gold"), ("choices", "0", "text")}
    assert item_paths("{{sample.output_text}} {{sample.output_json.x.y}}") == set()
    assert item_paths("no placeholders") == set()


def test_present_paths() -> None:
    deep = {"a": {"b": {"c": {"d": {"e": 1}}}}}
    item = {"answer": 1, "meta": {"gold": "x", "deep": deep}, "list": [{"in_list": 1}]}
    assert present_paths(item) == {
        "answer",
        "meta",
        "meta.gold",
        "meta.deep",
        "meta.deep.a",
        "meta.deep.a.b",
        "meta.deep.a.b.c",
        "meta.deep.a.b.c.d",  # depth 6 (MAX_PATH_DEPTH): not walked further
        "list",  # lists are not walked into
    }
    assert present_paths(item, max_depth=1) == {"answer", "meta", "list"}
    assert present_paths({}) == set()


def test_sample_as_dict() -> None:
    assert Sample('{"a": 1}').as_dict() == {"output_text": '{"a": 1}', "output_json": {"a": 1}}
    assert Sample("plain").as_dict() == {"output_text": "plain", "output_json": None}
