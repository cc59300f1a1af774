import subprocess
import sys

import e2mc


def test_version_and_cli_help():
    assert e2mc.__version__
    out = subprocess.run([sys.executable, "-m", "e2mc", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "COMMAND" in out.stdout


def test_unknown_public_name_raises():
    try:
        e2mc.does_not_exist  # noqa: B018
    except AttributeError as exc:
        assert "does_not_exist" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_evaluate_is_the_function_after_importing_the_evaluation_package():
    """``e2mc.evaluate`` (the function) and ``e2mc.evaluation`` (the package) have different names, so
    importing a submodule cannot bind the package over the function, in either order (fresh interpreter)."""
    code = """
import importlib, inspect, sys, types
first = sys.argv[1]
import e2mc
if first == "function":
    fn = e2mc.evaluate
import e2mc.evaluation.knn, e2mc.evaluation.features
if first == "submodule":
    fn = e2mc.evaluate
from e2mc.evaluation.api import evaluate
assert fn is evaluate and e2mc.evaluate is evaluate and inspect.isfunction(e2mc.evaluate), e2mc.evaluate
assert list(inspect.signature(e2mc.evaluate).parameters)[:2] == ["checkpoint_or_model", "dataset"]
assert isinstance(e2mc.evaluation, types.ModuleType) and hasattr(e2mc.evaluation, "__path__")
assert e2mc.evaluation.knn is sys.modules["e2mc.evaluation.knn"] and not callable(e2mc.evaluation)
print("ok")
"""
    for first in ("function", "submodule"):
        out = subprocess.run([sys.executable, "-c", code, first], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == "ok", (first, out.stdout, out.stderr[-2000:])
