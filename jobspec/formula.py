"""`calculate_output` of a multi grader: an arithmetic formula over its sub-graders' rewards.

Parsed with `ast` and evaluated by walking the tree, never by `eval`: numbers, sub-grader names, + - * / ^
(`**` too), unary minus, parentheses and the functions min, max, abs, floor, ceil, exp, sqrt, log. Anything
else (attributes, calls of other names, subscripts, comparisons, strings) is refused when the grader is
validated, so a formula that parses always evaluates (a division by zero or a domain error gives 0).
"""

import ast
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass

MAX_LENGTH = 1024
MAX_DEPTH = 64  # nesting of the syntax tree: evaluation recurses, so a deeper formula is refused
_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: math.pow,  # real-valued: (-8) ^ (1/3) is a domain error (0), never a complex number
}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}
# how many arguments each function takes (min and max take two or more)
_ARITY: dict[str, tuple[int, int | None]] = {"min": (2, None), "max": (2, None), "log": (1, 2)}


class FormulaError(ValueError):
    """The formula is not one this evaluator accepts (OpenAI's formula_parse_error)."""


@dataclass(frozen=True)
class Formula:
    """A checked formula; `names` are the sub-grader names it reads."""

    text: str
    tree: ast.Expression
    names: frozenset[str]

    def evaluate(self, values: Mapping[str, float]) -> float:
        """The formula's value for these sub-rewards; math errors and overflow give 0.0."""
        try:
            result = float(_evaluate(self.tree.body, values))
        except (ArithmeticError, ValueError):
            return 0.0
        return result if math.isfinite(result) else 0.0


def parse_formula(text: str, names: set[str]) -> Formula:
    """The checked formula; FormulaError naming what is not allowed, or a name that is no sub-grader."""
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"calculate_output is longer than {MAX_LENGTH} characters")
    # `^` is OpenAI's power operator; Python's `**` is accepted as well
    try:
        tree = ast.parse(text.replace("^", "**"), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise FormulaError(f"calculate_output {text!r} is not an arithmetic formula") from None
    used: set[str] = set()
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if id(node) not in called:  # a call's function name is checked with its call
            _check_node(node, names, used)
    if _depth(tree) > MAX_DEPTH:
        raise FormulaError(f"calculate_output is nested more than {MAX_DEPTH} levels deep")
    return Formula(text, tree, frozenset(used))


def _check_node(node: ast.AST, names: set[str], used: set[str]) -> None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise FormulaError(f"only numbers may appear as constants, not {node.value!r}")
    elif isinstance(node, ast.Name):
        if node.id not in names:
            raise FormulaError(f"{node.id!r} is no sub-grader name (known: {sorted(names)})")
        used.add(node.id)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
            raise FormulaError(f"only the functions {sorted(_FUNCTIONS)} may be called")
        low, high = _ARITY.get(node.func.id, (1, 1))
        if len(node.args) < low or (high is not None and len(node.args) > high):
            wanted = f"{low} or more" if high is None else str(low) if low == high else f"{low} to {high}"
            plural = "" if wanted == "1" else "s"
            raise FormulaError(f"{node.func.id}() takes {wanted} argument{plural}, not {len(node.args)}")
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise FormulaError("only + - * / and ^ are allowed")
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.USub | ast.UAdd):
            raise FormulaError("only unary + and - are allowed")
    elif not isinstance(node, ast.Expression | ast.Load | ast.operator | ast.unaryop):
        raise FormulaError(f"{type(node).__name__} is not allowed in a formula")


def _depth(tree: ast.AST) -> int:
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _evaluate(node: ast.expr, values: Mapping[str, float]) -> float:
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int | float), "checked by parse_formula"
        return float(node.value)
    if isinstance(node, ast.Name):
        return float(values[node.id])
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, values)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, values), _evaluate(node.right, values)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ArithmeticError("exponent too large")
        return _BINARY[type(node.op)](left, right)
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    return float(_FUNCTIONS[node.func.id](*(_evaluate(arg, values) for arg in node.args)))
