"""Generic code names no method: a method is known only through ``e2mc.methods.METHODS``.

Rule (checked on the syntax tree of every module outside ``methods/``, ``criteria/``, ``recipes/``
and the files in ``NOT_YET``): no identifier (variable, attribute, function, class, argument,
keyword, imported module or name) contains a registered method's name, and no string literal
that is a single word (``^[\\w.-]+$``: a key, a selector, a file or module name) contains one.
Prose is allowed: docstrings, comments, and strings with spaces (messages, help texts, example
command lines) may mention VICReg, SwAV or SimSiam, since they describe rather than select.
"""

import ast
import re
from pathlib import Path

from e2mc.methods import METHODS

SRC = Path(__file__).resolve().parents[1] / "src" / "e2mc"
OWN = ("methods", "criteria", "recipes")  # a method's own file, its criterion, the bundled recipes
NOT_YET = {
    # not generic code
    "demo.py": "the demo is a VICReg experiment: its recipe, its arms and their names",
    "__init__.py": "the public API's lazy names include the criteria classes (VICRegLoss, ...)",
}
WORD = re.compile(r"^[\w.-]+$")
# A method named after the encoder family it continues (a transformers ``model_type`` of
# ``e2mc.models.audio.MODEL_TYPES``, e.g. HuBERT's own objective) may be named as that family in
# the files that build or load the family's encoders: there the word names an architecture.
FAMILY_FILES = ("models/audio.py", "models/aves.py", "models/fairseq.py", "audiodemo.py")


def _selectors(rel: str) -> list[str]:
    """The method names that are offences in the file ``rel``."""
    if rel not in FAMILY_FILES:
        return list(METHODS)
    from e2mc.models.audio import MODEL_TYPES

    return [m for m in METHODS if m not in MODEL_TYPES]


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.arg):
        return [node.arg]
    if isinstance(node, ast.keyword) and node.arg:
        return [node.arg]
    if isinstance(node, ast.alias):
        return [node.name, node.asname or ""]
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return []


def offences(text: str, methods) -> list[tuple[int, str]]:
    """``(line, what)`` for each identifier or one-word string literal of ``text`` naming a method."""
    pattern = re.compile("|".join(re.escape(m) for m in methods), re.IGNORECASE)
    tree = ast.parse(text)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        for name in _names(node):
            if pattern.search(name):
                found.append((getattr(node, "lineno", 0), f"identifier {name}"))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if WORD.match(node.value) and pattern.search(node.value):
                found.append((node.lineno, f"string {node.value!r}"))
    return found


def test_generic_code_names_no_method():
    assert len(METHODS) >= 3
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.split("/")[0] in OWN or rel in NOT_YET:
            continue
        bad += [f"{rel}:{line}: {what}" for line, what in offences(path.read_text(), _selectors(rel))]
    assert not bad, "method names in generic code (declare it in the method's file instead):\n" + "\n".join(bad)


def test_the_rule_catches_what_it_should():
    code = '''
"""Docstring: VICReg is fine here."""
from e2mc.criteria.vicreg import covariance_term  # import of a method's module
x = cfg.method.name == "swav"                     # a selector
key = "swav_queue"                                 # a key
msg = "SimSiam needs two views; use --views 2"     # prose: allowed
def f(simsiam_heads): ...                          # an argument
'''
    lines = sorted(line for line, _ in offences(code, ["vicreg", "swav", "simsiam"]))
    assert lines == [3, 4, 5, 7]
    assert offences("NOT_YET = {'models/heads.py': 1}", ["swav"]) == []
