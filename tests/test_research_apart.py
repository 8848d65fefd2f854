"""The research subpackage imports the product; the product never imports it, not even lazily
or by a module path in a string (a command registry, ``importlib``)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

RESEARCH = "verifier_training.research"


def product_files() -> list[Path]:
    research = ROOT / "verifier_training" / "research"
    files = [p for p in (ROOT / "verifier_training").rglob("*.py") if research not in p.parents]
    return files + list((ROOT / "bon_server").rglob("*.py"))


def research_references(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                                | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in docstrings):
            names = [node.value]
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names
                  if n == RESEARCH or n.startswith(RESEARCH + ".") or f"{RESEARCH}." in n]
    return found


def test_no_product_module_imports_research():
    files = product_files()
    assert len(files) > 40  # the walk found the packages
    assert [ref for path in files for ref in research_references(path)] == []


def test_the_check_sees_an_import():
    sample = ROOT / "verifier_training" / "research" / "paths_init.py"
    assert research_references(sample)  # it imports verifier_training.research.heads
