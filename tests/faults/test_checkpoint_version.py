"""The compatibility rule for e2mc checkpoints written by another e2mc version (issue 28, item 6;
README "Checkpoint compatibility"): same or older major.minor reads silently, a newer minor
reads with a warning naming both versions, a newer major is refused; export keeps the writer's
version."""

import logging

import pytest
import torch

import e2mc
from e2mc.errors import CheckpointError
from e2mc.models.adapters import _version, check_version
from e2mc.models.checkpoints import load_model
from e2mc.models.export import export_model
from e2mc.models.model import SSLModel

from .conftest import cli, one_line_error

MAJOR, MINOR, PATCH = _version(e2mc.__version__)


def _checkpoint(tmp_path, version):
    model = SSLModel.build("vicreg", "resnet_mini:8-8-8", cifar_stem=True, projector=[16, 16])
    path = tmp_path / "m.pt"
    export_model(model, None, path, format="e2mc")
    state = torch.load(path, weights_only=True)
    if version is None:
        state.pop("e2mc_version")
    else:
        state["e2mc_version"] = version
    torch.save(state, path)
    return path


@pytest.mark.parametrize("version", [None, e2mc.__version__, f"{MAJOR}.{MINOR}.{PATCH + 7}", "0.0.1"])
def test_same_or_older_reads_silently(tmp_path, caplog, version):
    path = _checkpoint(tmp_path, version)
    with caplog.at_level(logging.WARNING):
        _, report = load_model(str(path))
    assert not [r for r in caplog.records if "e2mc" in r.getMessage() and "newer" in r.getMessage()]
    assert not [n for n in report.notes if "newer" in n]


def test_newer_minor_warns_naming_both(tmp_path, caplog):
    newer = f"{MAJOR}.{MINOR + 1}.0"
    path = _checkpoint(tmp_path, newer)
    with caplog.at_level(logging.WARNING, logger="e2mc.models.adapters"):
        _, report = load_model(str(path))
    msgs = [r.getMessage() for r in caplog.records]
    assert any(f"e2mc {newer}, newer than this e2mc {e2mc.__version__}" in m for m in msgs), msgs
    assert any(newer in n for n in report.notes)
    out = tmp_path / "exported.pt"
    caplog.clear()
    code, _, err = cli("export", path, "--out", out)
    assert code == 0, err
    assert any(f"e2mc {newer}" in r.getMessage() for r in caplog.records)  # the command that reads it says so
    written = torch.load(out, weights_only=True)
    assert written["e2mc_version"] == newer and written["exported_by"] == e2mc.__version__


def test_newer_major_or_unknown_is_refused(tmp_path):
    path = _checkpoint(tmp_path, f"{MAJOR + 1}.0.0")
    with pytest.raises(CheckpointError, match=rf"written by e2mc {MAJOR + 1}.0.0, a newer major version"):
        load_model(str(path))
    code, _, err = cli("inspect", path)
    one_line_error(code, err, "newer major version", "upgrade e2mc")
    with pytest.raises(CheckpointError, match="cannot interpret|not a version"):
        check_version("banana")


def test_version_parsing():
    assert _version("0.2.1") == (0, 2, 1) and _version("1.0.0rc1") == (1, 0, 0) and _version("2") == (2, 0, 0)
    assert _version("dev") is None


def test_resume_follows_the_rule(tmp_path):
    from e2mc.train.loop import Trainer

    from .conftest import tiny_config

    run = tmp_path / "run"
    Trainer(tiny_config(run, "train.epochs=1"), quiet=True).fit()
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["e2mc_version"] = f"{MAJOR + 1}.0.0"
    torch.save(state, last)
    before = last.read_bytes()
    with pytest.raises(CheckpointError, match="newer major version"):
        Trainer(tiny_config(run, "train.epochs=2", "out.resume=true"), quiet=True)
    assert last.read_bytes() == before
