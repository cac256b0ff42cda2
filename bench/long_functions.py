"""Functions longer than N lines (default 40) under the given folders, longest first: `python bench/long_functions.py
platform evaluation tuning`. Length = last line - first line + 1 of the def (decorators excluded), from `ast`."""

import ast
import sys
from pathlib import Path


def long_functions(folders: list[str], limit: int = 40) -> list[tuple[int, str]]:
    found = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > limit:
                        found.append((length, f"{path}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


if __name__ == "__main__":
    for length, where in long_functions(sys.argv[1:] or ["platform", "evaluation", "tuning"]):
        print(f"{length:4d}  {where}")
