"""Mistyped commands and folders that are not run folders get a pointer to what was meant
(issue 28, item 13): "did you mean" on every Python (argparse words it its own way on 3.14+),
and `evaluate <demo folder>` names the run folders it holds."""

import sys

import pytest

from e2mc.cli import did_you_mean
from e2mc.errors import CheckpointError
from e2mc.models.checkpoints import resolve_checkpoint_path

from .conftest import cli, one_line_error

PY311 = "argument COMMAND: invalid choice: 'contineu' (choose from 'demo', 'pretrain', 'continue', 'evaluate')"
PY312 = "argument COMMAND: invalid choice: 'contineu' (choose from demo, pretrain, continue, evaluate)"
PY314 = (
    "argument COMMAND: invalid choice: 'contineu', maybe you meant 'continue'? (choose from demo, pretrain, continue)"
)


@pytest.mark.parametrize("message", [PY311, PY312])
def test_did_you_mean_added(message):
    assert did_you_mean(message) == message + "; did you mean 'continue'?"


def test_did_you_mean_not_doubled_or_invented():
    assert did_you_mean(PY314) == PY314  # Python 3.14's own suggestion is kept, not repeated
    far = PY311.replace("contineu", "xyzzy")
    assert did_you_mean(far) == far
    assert did_you_mean("unrecognized arguments: --lrr") == "unrecognized arguments: --lrr"


def test_cli_typo(capsys):
    with pytest.raises(SystemExit) as exc:
        from e2mc.cli import main

        main(["contineu"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
    if sys.version_info < (3, 14):
        assert "did you mean 'continue'? See `e2mc --help`." in err
    assert err.count("continue'?") == 1
    with pytest.raises(SystemExit):
        main(["pretrain", "--method", "vicrag"])
    assert "did you mean 'vicreg'?" in capsys.readouterr().err


def test_folder_of_runs_names_them(tmp_path):
    demo = tmp_path / "demo"
    for run in ("e2mc_s0", "none_s0"):
        (demo / "runs" / run / "checkpoints").mkdir(parents=True)
        (demo / "runs" / run / "checkpoints" / "last.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError) as exc:
        resolve_checkpoint_path(demo)
    msg = str(exc.value)
    assert f"{demo / 'runs' / 'e2mc_s0'}, {demo / 'runs' / 'none_s0'}: pass one of them" in msg
    code, _, err = cli("evaluate", demo, "--dataset", "digits", "--protocols", "rankme")
    one_line_error(code, err, "runs/e2mc_s0", "pass one of them")
    code, _, err = cli("compare", demo, "--dataset", "digits", "--protocols", "rankme")
    one_line_error(code, err, "runs/none_s0", "pass one of them")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError) as exc:
        resolve_checkpoint_path(tmp_path / "empty")
    assert "holds the run folders" not in str(exc.value)
    inner = demo / "runs" / "e2mc_s0" / "checkpoints"  # a run's checkpoints/ folder itself: its last.pt
    assert resolve_checkpoint_path(inner) == inner / "last.pt"


def test_did_you_mean_ignores_case():
    upper = PY312.replace("contineu", "CONTINUE")
    assert did_you_mean(upper) == upper + "; did you mean 'continue'?"


def test_e2mc_warnings_are_one_line_each_and_said_once():
    """A warning of e2mc's own, raised twice while a command runs, is one line, once; another
    library's keeps Python's format; the format is Python's again after the command. (A fresh
    interpreter: pytest records warnings instead of printing them.)"""
    import subprocess
    import textwrap

    script = textwrap.dedent(
        """
        import warnings
        import e2mc.evaluation.knn as knn
        from e2mc import cli

        def command(args):
            for _ in range(2):
                warnings.warn_explicit("kNN: k=200 > the 60 training samples", UserWarning, knn.__file__, 184)
            warnings.warn_explicit("a library's", UserWarning, "/site-packages/lib/mod.py", 7)
            return 0

        import e2mc.commands.recipes as recipes
        recipes.run = command  # `e2mc recipes` runs it (its parser is built when main runs)
        warnings.simplefilter("always")
        assert cli.main(["recipes"]) == 0
        assert warnings.formatwarning is cli._PYTHON_FORMAT
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stderr.count("e2mc: warning: kNN: k=200 > the 60 training samples\n") == 1, res.stderr
    assert "knn.py" not in res.stderr and "mod.py:7: UserWarning: a library's" in res.stderr


def test_an_unreadable_checkpoint_is_one_line(tmp_path, monkeypatch):
    """check_header (run before a continuation builds anything): a file it cannot open is a
    CheckpointError naming it, not an OSError traceback."""
    import builtins

    from e2mc.models.checkpoints import check_header

    path = tmp_path / "locked.pth"
    path.write_bytes(b"\x80\x02")
    real = builtins.open

    def denied(p, *a, **kw):
        if str(p) == str(path):
            raise PermissionError(13, "Permission denied")
        return real(p, *a, **kw)

    monkeypatch.setattr(builtins, "open", denied)
    with pytest.raises(CheckpointError, match="cannot read .*locked.pth: Permission denied; check the file"):
        check_header(path)
