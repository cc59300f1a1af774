"""The package's structure holds: import-linter's layer contract (pyproject.toml), no import
circle between any two modules (also through function-level imports), and ruff's lint rules."""

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def test_layer_contract_kept():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_no_import_circle():
    """grimp sees function-level imports too (those that only hide a circle from Python)."""
    graph = grimp.build_graph("e2mc", cache_dir=None)
    circles = sorted(
        {
            tuple(sorted((a, b)))
            for a in graph.modules
            for b in graph.find_modules_directly_imported_by(a)
            if b != a and graph.chain_exists(importer=b, imported=a)
        }
    )
    assert circles == [], f"modules importing each other: {circles}"


def test_a_circle_would_be_found(tmp_path, monkeypatch):
    """The check above can fail: a two-module package with a hidden circle is reported."""
    pkg = tmp_path / "circ_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from circ_pkg import b\n")
    (pkg / "b.py").write_text("import circ_pkg.a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("circ_pkg", cache_dir=None)
    assert graph.chain_exists(importer="circ_pkg.b", imported="circ_pkg.a")
    assert graph.chain_exists(importer="circ_pkg.a", imported="circ_pkg.b")


def test_ruff_lint_clean():
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "src", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_ruff_format_clean():
    """One code style: `ruff format` (pyproject's [tool.ruff], line length 120) leaves every file as it is.
    Fix with `ruff format .`."""
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "src", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
