"""Walking a grader spec: its leaf graders, templates, the item paths they read and the judge models they
call; and how a validation error's location names a field (`grader.graders.x.reference`)."""

from typing import Any

from jobspec.graders import GRADER_TYPES, LabelModelGrader, MultiGrader, ScoreModelGrader
from jobspec.templates import ItemPath, item_paths


def is_type_tag(parts: list[str], text: str) -> bool:
    """Whether `text`, next in a validation error's location after `parts`, is the label pydantic adds for
    the grader type a tagged union chose (not part of the field's path): after `grader` or a sub-grader."""
    after_grader = bool(parts) and (parts[-1] == "grader" or (len(parts) >= 2 and parts[-2] == "graders"))
    return after_grader and text in GRADER_TYPES


def leaf_graders(grader: Any, prefix: str) -> dict[str, Any]:
    """The grader itself, or a multi grader's sub-graders, keyed by param (`grader`, `grader.graders.x`)."""
    if isinstance(grader, MultiGrader):
        return {f"{prefix}.graders.{name}": sub for name, sub in grader.graders.items()}
    return {prefix: grader}


def template_params(grader: Any, prefix: str) -> dict[str, str]:
    """Every template of a grader keyed by its param name (`grader.input`, `grader.graders.x.input[0]...`)."""
    found: dict[str, str] = {}
    if isinstance(grader, MultiGrader):
        for param, sub in leaf_graders(grader, prefix).items():
            found.update(template_params(sub, param))
    elif isinstance(grader, ScoreModelGrader | LabelModelGrader):
        for index, message in enumerate(grader.input):
            for part, text in enumerate(message.templates()):
                found[f"{prefix}.input[{index}].content[{part}]"] = text
    else:
        for attr in ("input", "reference"):
            if isinstance(getattr(grader, attr, None), str):
                found[f"{prefix}.{attr}"] = getattr(grader, attr)
    return found


def grader_item_paths(grader: Any, prefix: str) -> dict[str, set[ItemPath]]:
    """The item paths each template of a grader reads, keyed by param (Python graders: none known)."""
    return {param: item_paths(text) for param, text in template_params(grader, prefix).items()}


def judge_models(grader: Any) -> list[str]:
    """The models a grader's judges call (none for rule, similarity and Python graders)."""
    return [
        sub.model
        for sub in leaf_graders(grader, "").values()
        if isinstance(sub, ScoreModelGrader | LabelModelGrader)
    ]
