"""CodeSearchNet's pairing of Python definitions with their docstrings, shared by the `stdlib-code` suite set
(revela.evaluation.suite) and by evals built from a user's own code (revela.evaluation.corpus_eval).

A definition's passage is its source lines (decorators and signature included) with the docstring's lines
removed; its query comes from that docstring. Nested definitions stay inside the function that holds them, as
CodeSearchNet keeps them. Classes (only when asked for) are reduced to an outline: the class line, its
class-level statements and one signature line per method or nested class, each followed by `...`. Their bodies
are passages of their own, and a class passage holding every method's docstring would contain those methods'
queries word for word.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class Definition:
    name: str
    kind: str
    """"function" (functions and methods) or "class"."""
    line: int
    """1-based line of the `def`/`class` keyword."""
    docstring: str | None
    """`ast.get_docstring` (indentation cleaned); None when the definition has none."""
    code: str
    """The passage: the definition without its docstring (a class: its outline, see the module docstring)."""
    lines: int
    """Lines in `code` (0 when empty)."""


def first_sentence(docstring: str) -> str:
    """The first sentence of the first paragraph, whitespace collapsed (the stdlib-code query)."""
    return re.split(r"(?<=\.)\s", first_paragraph(docstring))[0]


def first_paragraph(docstring: str) -> str:
    """The first paragraph, whitespace collapsed (CodeSearchNet's query)."""
    return " ".join(re.split(r"\n\s*\n", docstring.strip())[0].split())


def _start(node: ast.AST) -> int:
    """0-based first line of a definition: its first decorator's, else its `def` line."""
    return min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1


def _joined(body: list[str]) -> tuple[str, int]:
    return "\n".join(body), len(body)


def _function(node, lines: list[str]) -> Definition:
    docstring = ast.get_docstring(node)
    start = _start(node)
    if docstring is not None:
        doc = node.body[0]
        body = lines[start: doc.lineno - 1] + lines[doc.end_lineno: node.end_lineno]
    else:
        body = lines[start: node.end_lineno]
    code, n = _joined(body)
    return Definition(node.name, "function", node.lineno, docstring, code, n)


def _signature(node, lines: list[str]) -> list[str]:
    """A nested definition as its decorators and signature, then `...` at its body's indentation."""
    first = node.body[0]
    if first.lineno == node.lineno:  # `def f(x): return x`: the one line is the signature
        return lines[_start(node): node.lineno]
    return lines[_start(node): first.lineno - 1] + [" " * first.col_offset + "..."]


def _class(node: ast.ClassDef, lines: list[str]) -> Definition:
    docstring = ast.get_docstring(node)
    start = _start(node)
    first = node.body[0]
    body = lines[start: first.lineno - 1] if first.lineno > node.lineno else lines[start: node.lineno]
    for i, stmt in enumerate(node.body):
        if i == 0 and docstring is not None:
            continue
        if isinstance(stmt, (*_DEFS, ast.ClassDef)):
            body += _signature(stmt, lines)
        elif stmt.lineno > node.lineno:
            body += lines[stmt.lineno - 1: stmt.end_lineno]
    code, n = _joined(body)
    return Definition(node.name, "class", node.lineno, docstring, code, n)


def python_definitions(source: str, *, classes: bool = False) -> Iterator[Definition]:
    """Every function and method (and class, when `classes`) of a Python source, in `ast.walk` order.

    Raises SyntaxError or ValueError (e.g. NUL bytes) for a source that does not parse.
    """
    tree = ast.parse(source)
    lines = source.splitlines()
    for node in ast.walk(tree):
        if isinstance(node, _DEFS):
            yield _function(node, lines)
        elif classes and isinstance(node, ast.ClassDef):
            yield _class(node, lines)
