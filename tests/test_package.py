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
