"""The README's promises: its test command is what CI runs, the tour runs as written, and every
other e2mc command it shows parses with the real CLI (with real recipe names)."""

import json
import re
import shlex
from pathlib import Path

from e2mc.cli import build_parser, main
from e2mc.recipes import recipe_path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _code_lines(text):
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line.strip() for b in blocks for line in b.splitlines() if line.strip()]


def _tour():
    block = README.split("<!-- tour:start -->")[1].split("<!-- tour:end -->")[0]
    return _code_lines(block)


def _e2mc_args(line):
    words = shlex.split(line)
    if words[0] == "e2mc":
        return words[1:]
    if words[0] == "torchrun":
        return words[words.index("e2mc") + 1 :]  # torchrun ... -m e2mc ARGS
    return None


def test_ci_runs_the_readme_test_command():
    test_cmd = 'python3 -m pip install -e ".[test]" && python3 -m pytest -q'
    assert test_cmd in _code_lines(README)
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
    assert "python3 -m pip install . && e2mc demo" in _code_lines(README)


def test_every_shown_command_parses():
    parser = build_parser()
    lines = [line for line in _code_lines(README) if _e2mc_args(line) is not None]
    assert len(lines) >= 15
    for line in lines:
        args = parser.parse_args(_e2mc_args(line))
        assert callable(args.func), line
        if getattr(args, "recipe", None):
            assert recipe_path(args.recipe).is_file()


def test_tour_runs_as_written(tmp_path, monkeypatch, capsys):
    import torch

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("E2MC_CACHE", str(tmp_path / "cache"))
    tour = _tour()
    assert len(tour) >= 8
    said, logged = {}, {}
    for line in tour:
        code = main(_e2mc_args(line))
        out, err = capsys.readouterr()
        assert code == 0, f"{line!r} exited {code}: {err[-2000:]}"
        said[line] = out
        logged[line] = err
    # `continue` says what it loaded, the loss in use, and where to go next
    e2mc_run = next(out for line, out in said.items() if "--addon e2mc" in line)
    e2mc_log = next(err for line, err in logged.items() if "--addon e2mc" in line)
    assert "loaded:\n  checkpoint : runs/start/checkpoints/last.pt" in e2mc_log
    assert "loss   : vicreg + e2mc (entropy_weight " in e2mc_log
    assert e2mc_run.strip().splitlines()[-1].startswith("done: continue vicreg + e2mc (")
    assert e2mc_run.strip().endswith("-> runs/e2mc (next: e2mc evaluate runs/e2mc --dataset digits)")
    # evaluate --json: indented like inspect --json, and says which evaluation seeds each protocol used
    ev = next(out for line, out in said.items() if line.startswith("e2mc evaluate"))
    assert ev.startswith('{\n  "meta"')
    assert json.loads(ev)["meta"]["seeds_used"] == {"knn": [], "linear": [0], "rankme": []}
    assert next(out for line, out in said.items() if line.startswith("e2mc inspect")).startswith('{\n  "')
    report = tmp_path / "runs" / "cmp"  # `compare --out` writes the one report
    html = (report / "report.html").read_text()
    assert "Headline (knn/top1_k20" in html and "## Runs" in (report / "report.md").read_text()
    for plot in ("training", "accuracy", "spectrum", "marginals"):  # the plots the README promises
        assert (report / f"{plot}.png").is_file(), plot
        assert f"({plot}.png)" in (report / "report.md").read_text()
    assert (tmp_path / "runs" / "e2mc_backbone.safetensors").is_file()


def test_the_method_table_lists_every_registered_method_with_its_defaults():
    """One row per ``METHODS`` entry (a method added without its README row fails here), and the
    row's E2MC weights are the method file's ``e2mc_defaults``."""
    from e2mc.methods import METHODS

    head = "| method (`--method`) |"
    table = README.split(head, 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = cells
    assert set(rows) == set(METHODS), f"README method table rows {sorted(rows)} vs registered {sorted(METHODS)}"
    for name, spec in METHODS.items():
        entropy, cov, _ = spec.e2mc_defaults
        assert rows[name][3].startswith(f"{entropy:g} / {cov:g}"), (name, rows[name][3], spec.e2mc_defaults)
